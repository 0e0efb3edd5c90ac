// The runtimes of the C++ demo behind one interface (backends.py's twins, docs/extending.md):
// OpenVINO on the Paddle program itself (openvino-f32/-bf16), and ONNX Runtime's C API on the
// graphs deploy/cpp/convert_onnx.py writes (onnxruntime, onnxruntime-int8).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "slu.h"

namespace slu {

class Engine {
 public:
  virtual ~Engine() = default;
  // Runs `rows` rows of `seq_len` token ids (row-major); the outputs stay valid until the next Run.
  virtual void Run(const int64_t* ids, size_t rows, size_t seq_len) = 0;
  virtual const float* intent_logits() const = 0;  // [rows x intents]
  virtual const float* slot_logits() const = 0;    // [rows x seq_len x tags]
  virtual std::vector<size_t> intent_shape() const = 0;
  virtual std::vector<size_t> slot_shape() const = 0;
  // Each row must run alone and unpadded (backends.Backend.rows_alone): int8 activations are
  // quantized with one scale per call, so rows of one call would change each other's answers.
  virtual bool rows_alone() const { return false; }
  virtual std::string name() const = 0;  // as backends.py names it
};

// precision: f32 | bf16 (OpenVINO's inference precision); threads 0 = OpenVINO's choice.
std::unique_ptr<Engine> OpenVinoEngine(const Model& model, const std::string& precision, int threads);
// precision: f32 (model.onnx) | int8 (model.int8.onnx), beside the export; threads 0 = ONNX Runtime's choice.
std::unique_ptr<Engine> OnnxRuntimeEngine(const Model& model, const std::string& precision, int threads);

// The probe row through the engine once, before any answer (export_format.check_graph_outputs).
void CheckEngine(const Model& model, Engine& engine);

}  // namespace slu
