#include "engines.h"

#include <onnxruntime_c_api.h>

#include <fstream>
#include <openvino/openvino.hpp>
#include <stdexcept>

namespace slu {

namespace {

class OpenVino : public Engine {
 public:
  OpenVino(const Model& model, const std::string& precision, int threads) : precision_(precision) {
    ov::Core core;
    // read_model takes model.pdiparams from beside model.pdmodel. f32 by default: on CPUs with
    // avx512_bf16 OpenVINO would otherwise pick bf16 and the logits would drift from Python's.
    ov::AnyMap config{ov::hint::inference_precision(precision == "f32" ? ov::element::f32 : ov::element::bf16),
                      ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
    if (threads > 0) config.emplace(ov::inference_num_threads(threads));
    ov::CompiledModel compiled = core.compile_model(core.read_model(model.graph_path()), "CPU", config);
    // OpenVINO compiles a bf16 request as f32 on a CPU without bf16 and says nothing: refuse, as
    // backends.py's openvino-bf16 does, rather than report f32 figures as bf16 ones
    const ov::element::Type runs = compiled.get_property(ov::hint::inference_precision);
    if (precision == "bf16" && runs != ov::element::bf16) {
      std::string capabilities;
      for (const std::string& c : core.get_property("CPU", ov::device::capabilities)) capabilities += (capabilities.empty() ? "" : ", ") + c;
      throw std::runtime_error("--precision bf16: this CPU cannot run bf16 (OpenVINO's CPU capabilities: " + capabilities +
                               "); OpenVINO would run " + runs.get_type_name() + " instead");
    }
    request_ = compiled.create_infer_request();
  }
  void Run(const int64_t* ids, size_t rows, size_t seq_len) override {
    request_.set_input_tensor(0, ov::Tensor(ov::element::i64, {rows, seq_len}, const_cast<int64_t*>(ids)));
    request_.infer();
  }
  const float* intent_logits() const override { return request_.get_output_tensor(0).data<float>(); }
  const float* slot_logits() const override { return request_.get_output_tensor(1).data<float>(); }
  std::vector<size_t> intent_shape() const override { return request_.get_output_tensor(0).get_shape(); }
  std::vector<size_t> slot_shape() const override { return request_.get_output_tensor(1).get_shape(); }
  std::string name() const override { return "openvino-" + precision_; }

 private:
  std::string precision_;
  mutable ov::InferRequest request_;
};

// ONNX Runtime through its C API (the headers of the pinned release, third_party/onnxruntime; the
// library of the onnxruntime pip wheel), with the session options of backends.onnxruntime_logits.
class OnnxRuntime : public Engine {
 public:
  OnnxRuntime(const Model& model, const std::string& precision, int threads) : precision_(precision) {
    api_ = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (api_ == nullptr)
      throw std::runtime_error(std::string("the ONNX Runtime library (") + OrtGetApiBase()->GetVersionString() +
                               ") is older than the headers this demo was built with (API " + std::to_string(ORT_API_VERSION) + ")");
    const std::string path = model.model_dir() + "/" + (precision == "int8" ? kOnnxInt8File : kOnnxFile);
    if (!std::ifstream(path))
      throw std::runtime_error(path + ": missing; write it with `python deploy/cpp/convert_onnx.py --model_dir " + model.model_dir() + "`");
    Check(api_->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "slu_demo", &env_));
    OrtSessionOptions* options = nullptr;
    Check(api_->CreateSessionOptions(&options));
    struct Release {
      const OrtApi* api;
      OrtSessionOptions* options;
      ~Release() { api->ReleaseSessionOptions(options); }
    } release{api_, options};
    Check(api_->SetIntraOpNumThreads(options, threads));
    Check(api_->SetInterOpNumThreads(options, 1));
    Check(api_->SetSessionGraphOptimizationLevel(options, ORT_ENABLE_ALL));
    Check(api_->CreateSession(env_, path.c_str(), options, &session_), path);
    CheckSource(model, path);
    Check(api_->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory_));
  }
  ~OnnxRuntime() override {
    ReleaseOutputs();
    if (memory_) api_->ReleaseMemoryInfo(memory_);
    if (session_) api_->ReleaseSession(session_);
    if (env_) api_->ReleaseEnv(env_);
  }
  void Run(const int64_t* ids, size_t rows, size_t seq_len) override {
    ReleaseOutputs();
    const int64_t shape[2] = {static_cast<int64_t>(rows), static_cast<int64_t>(seq_len)};
    OrtValue* input = nullptr;
    Check(api_->CreateTensorWithDataAsOrtValue(memory_, const_cast<int64_t*>(ids), rows * seq_len * sizeof(int64_t), shape, 2,
                                               ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, &input));
    const char* input_names[] = {input_name_.c_str()};
    const char* output_names[] = {output_names_[0].c_str(), output_names_[1].c_str()};
    OrtStatus* status = api_->Run(session_, nullptr, input_names, &input, 1, output_names, 2, outputs_);
    api_->ReleaseValue(input);
    Check(status);
    for (int i = 0; i < 2; ++i) {
      void* data = nullptr;
      Check(api_->GetTensorMutableData(outputs_[i], &data));
      data_[i] = static_cast<const float*>(data);
      OrtTensorTypeAndShapeInfo* info = nullptr;
      Check(api_->GetTensorTypeAndShape(outputs_[i], &info));
      size_t count = 0;
      OrtStatus* s = api_->GetDimensionsCount(info, &count);
      std::vector<int64_t> dims(count);
      if (s == nullptr) s = api_->GetDimensions(info, dims.data(), count);
      api_->ReleaseTensorTypeAndShapeInfo(info);
      Check(s);
      shapes_[i].assign(dims.begin(), dims.end());
    }
  }
  const float* intent_logits() const override { return data_[0]; }
  const float* slot_logits() const override { return data_[1]; }
  std::vector<size_t> intent_shape() const override { return shapes_[0]; }
  std::vector<size_t> slot_shape() const override { return shapes_[1]; }
  bool rows_alone() const override { return precision_ == "int8"; }
  std::string name() const override { return precision_ == "int8" ? "onnxruntime-int8" : "onnxruntime"; }

 private:
  void Check(OrtStatus* status, const std::string& where = "") const {
    if (status == nullptr) return;
    const std::string message = api_->GetErrorMessage(status);
    api_->ReleaseStatus(status);
    throw std::runtime_error((where.empty() ? "onnxruntime: " : where + ": ") + message);
  }
  // The graph's names, and its stamp against the export beside it (onnx_graph.SOURCE_KEY).
  void CheckSource(const Model& model, const std::string& path) {
    OrtAllocator* allocator = nullptr;
    Check(api_->GetAllocatorWithDefaultOptions(&allocator));
    auto take = [&](char* text) {
      std::string out = text ? text : "";
      if (text) Check(api_->AllocatorFree(allocator, text));
      return out;
    };
    size_t inputs = 0, outputs = 0;
    Check(api_->SessionGetInputCount(session_, &inputs));
    Check(api_->SessionGetOutputCount(session_, &outputs));
    if (inputs != 1 || outputs != 2)
      throw std::runtime_error(path + ": " + std::to_string(inputs) + " inputs and " + std::to_string(outputs) +
                               " outputs; the contract's graph has 1 and 2 (convert the export again)");
    char* text = nullptr;
    Check(api_->SessionGetInputName(session_, 0, allocator, &text));
    input_name_ = take(text);
    for (size_t i = 0; i < 2; ++i) {
      Check(api_->SessionGetOutputName(session_, i, allocator, &text));
      output_names_[i] = take(text);
    }
    OrtModelMetadata* metadata = nullptr;
    Check(api_->SessionGetModelMetadata(session_, &metadata));
    text = nullptr;
    OrtStatus* status = api_->ModelMetadataLookupCustomMetadataMap(metadata, allocator, kOnnxSourceKey, &text);
    api_->ReleaseModelMetadata(metadata);
    Check(status);
    const std::string stamp = take(text);
    if (stamp != model.OnnxSourceStamp())
      throw std::runtime_error(path + ": " + (stamp.empty() ? std::string("carries no ") + kOnnxSourceKey : std::string("was converted from another export")) +
                               " (its " + kOnnxSourceKey + " differs from " + kManifestFile + "'s digests of " + kGraphFile + " and " +
                               kParamsFile + "); convert again: python deploy/cpp/convert_onnx.py --model_dir " + model.model_dir());
  }
  void ReleaseOutputs() {
    for (OrtValue*& value : outputs_) {
      if (value) api_->ReleaseValue(value);
      value = nullptr;
    }
  }

  std::string precision_, input_name_, output_names_[2];
  const OrtApi* api_ = nullptr;
  OrtEnv* env_ = nullptr;
  OrtSession* session_ = nullptr;
  OrtMemoryInfo* memory_ = nullptr;
  OrtValue* outputs_[2] = {nullptr, nullptr};
  const float* data_[2] = {nullptr, nullptr};
  std::vector<size_t> shapes_[2];
};

}  // namespace

std::unique_ptr<Engine> OpenVinoEngine(const Model& model, const std::string& precision, int threads) {
  return std::make_unique<OpenVino>(model, precision, threads);
}

std::unique_ptr<Engine> OnnxRuntimeEngine(const Model& model, const std::string& precision, int threads) {
  return std::make_unique<OnnxRuntime>(model, precision, threads);
}

void CheckEngine(const Model& model, Engine& engine) {
  const std::vector<int64_t> probe = model.ProbeRow();
  engine.Run(probe.data(), 1, probe.size());
  model.CheckProbeOutputs(engine.intent_shape(), engine.intent_logits(), engine.slot_shape(), engine.slot_logits(), engine.name());
}

}  // namespace slu
