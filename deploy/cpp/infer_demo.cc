// C++ demo: intent + slots for utterances with an exported model directory, run by the OpenVINO
// runtime (which reads the Paddle program directly). Prints the JSON lines of run_eval.py.
//
//   build/cpp/slu_demo --model_dir output/demo/infer_model --text 导航去北京
//   echo 播放周杰伦的稻香 | build/cpp/slu_demo --model_dir output/demo/infer_model
#include <openvino/openvino.hpp>

#include <chrono>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "slu.h"

namespace {

struct Args {
  std::string model_dir, precision = "f32";
  std::vector<std::string> texts;
  int cpu_threads = 0;
  bool tokenize_only = false, print_contract = false;
};

const char* kUsage =
    "usage: slu_demo --model_dir DIR [--text UTTERANCE]... [--cpu_threads N] [--precision f32|bf16] [--tokenize_only]\n"
    "       slu_demo --print_contract\n"
    "  without --text, one utterance per stdin line; --tokenize_only prints token ids and offsets (tests);\n"
    "  --print_contract prints the export contract this build reads (tests compare it with export_format.py)\n";

Args ParseArgs(int argc, char** argv) {
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--model_dir") args.model_dir = value();
    else if (flag == "--text") args.texts.push_back(value());
    else if (flag == "--cpu_threads") args.cpu_threads = std::stoi(value());
    else if (flag == "--precision") args.precision = value();
    else if (flag == "--tokenize_only") args.tokenize_only = true;
    else if (flag == "--print_contract") args.print_contract = true;
    else throw std::invalid_argument("unknown flag " + flag);
  }
  if (args.model_dir.empty() && !args.print_contract) throw std::invalid_argument("--model_dir is required");
  if (args.precision != "f32" && args.precision != "bf16") throw std::invalid_argument("--precision must be f32 or bf16");
  return args;
}

std::string TokensJson(const slu::Encoded& enc) {
  std::string ids = "[", offsets = "[";
  for (const auto& w : enc.windows)
    for (size_t t = 1; t + 1 < w.size(); ++t) ids += (ids.size() > 1 ? ", " : "") + std::to_string(w[t]);
  for (int o : enc.offsets) offsets += (offsets.size() > 1 ? ", " : "") + std::to_string(o);
  return "{\"ids\": " + ids + "], \"offsets\": " + offsets + "]}";
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = ParseArgs(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n" << kUsage;
    return 2;
  }
  if (args.print_contract) {
    std::cout << slu::ContractJson() << "\n";
    return 0;
  }
  std::vector<std::string> texts = args.texts;
  if (texts.empty())
    for (std::string line; std::getline(std::cin, line);) texts.push_back(line.size() && line.back() == '\r' ? line.substr(0, line.size() - 1) : line);

  try {
    slu::Model model(args.model_dir);
    ov::CompiledModel compiled;
    if (!args.tokenize_only) {
      ov::Core core;
      // read_model takes model.pdiparams from beside model.pdmodel. f32 by default: on CPUs with
      // avx512_bf16 OpenVINO would otherwise pick bf16 and the logits would drift from Python's.
      ov::AnyMap config{ov::hint::inference_precision(args.precision == "f32" ? ov::element::f32 : ov::element::bf16),
                        ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
      if (args.cpu_threads > 0) config.emplace(ov::inference_num_threads(args.cpu_threads));
      compiled = core.compile_model(core.read_model(model.graph_path()), "CPU", config);
    }
    ov::InferRequest request = args.tokenize_only ? ov::InferRequest() : compiled.create_infer_request();
    const size_t window = model.max_seq_length() - 2;
    auto start = std::chrono::steady_clock::now();
    for (size_t n = 0; n < texts.size(); ++n) {
      slu::Encoded enc;
      try {
        enc = model.Encode(texts[n]);
      } catch (const std::invalid_argument& e) {  // malformed UTF-8: name the line
        std::cout << slu::LineErrorJson(n + 1, e.what()) << "\n";
        continue;
      }
      if (args.tokenize_only) {
        std::cout << TokensJson(enc) << "\n";
        continue;
      }
      const std::string error = model.Check(enc);
      if (!error.empty()) {
        std::cout << slu::ErrorJson(texts[n], error) << "\n";
        continue;
      }
      if (enc.offsets.size() > window)
        std::cerr << "utterance " << n + 1 << ": " << enc.offsets.size() << " characters, predicted in " << enc.windows.size()
                  << " windows of " << window << "\n";
      size_t seq_len = 0;
      std::vector<int64_t> padded = model.PadWindows(enc, &seq_len);
      request.set_input_tensor(0, ov::Tensor(ov::element::i64, {enc.windows.size(), seq_len}, padded.data()));
      request.infer();
      std::cout << model.Describe(enc, request.get_output_tensor(0).data<float>(), request.get_output_tensor(1).data<float>(),
                                  static_cast<int>(seq_len))
                << "\n";
    }
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::cerr << "openvino (" << args.precision << "): " << texts.size() << " utterances in " << ms
              << " ms (tokenization + model + decoding)\n";
  } catch (const std::exception& e) {
    std::cerr << "slu_demo: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
