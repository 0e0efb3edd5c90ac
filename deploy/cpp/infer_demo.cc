// C++ demo: intent + slots for utterances with an exported model directory, run by ONNX Runtime
// (on the graphs deploy/cpp/convert_onnx.py writes beside the export) or by OpenVINO (which reads
// the Paddle program directly). Prints the JSON lines of run_eval.py.
//
//   build/cpp/slu_demo --model_dir output/demo/infer_model --text 导航去北京
//   build/cpp/slu_demo --model_dir M --runtime onnxruntime --precision int8 --text 导航去北京
//   echo 播放周杰伦的稻香 | build/cpp/slu_demo --model_dir output/demo/infer_model
//   build/cpp/slu_demo --model_dir M --text 取消 --context 导航去北京
//   build/cpp/slu_demo --model_dir M --sessions < turns.jsonl   # {"session_id": ..., "text": ...} per line
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engines.h"
#include "slu.h"

namespace {

struct Args {
  std::string model_dir, runtime = "openvino", precision = "f32", logits_file, weights_file = slu::kParamsFile;
  std::vector<std::string> texts, context, catalogue_files;
  int cpu_threads = 0;
  double min_confidence = 0.0;
  bool tokenize_only = false, print_contract = false, sessions = false, resolve_only = false;
};

const char* kUsage =
    "usage: slu_demo --model_dir DIR [--text UTTERANCE]... [--context EARLIER]... [--sessions] [--cpu_threads N]\n"
    "                [--runtime openvino|onnxruntime] [--precision f32|bf16|int8] [--min_confidence P] [--catalogue_file FILE]... [--tokenize_only | --logits_file FILE]\n"
    "                [--weights_file NAME]\n"
    "       slu_demo --print_contract\n"
    "  without --text, one utterance per stdin line; --context: an earlier utterance of the --text utterances' session\n"
    "  (repeat, oldest first; read by models trained with context); --sessions: stdin lines are JSON objects\n"
    "  {\"session_id\", \"text\"} in conversation order, each read with its session's earlier lines as context (run_eval.py\n"
    "  --sessions_file); --runtime openvino (default) runs model.pdmodel in f32 or bf16; --runtime onnxruntime runs\n"
    "  model.onnx (f32) or model.int8.onnx (int8) beside it, written by deploy/cpp/convert_onnx.py; --min_confidence: results whose intent or any slot confidence\n"
    "  is below P say \"fallback\": true; --catalogue_file: your slot values (JSON lines; docs/decoding.md#slot-values)\n"
    "  added to the export's; --tokenize_only prints token ids and offsets (tests); --logits_file decodes\n"
    "  logits given in FILE instead of running the model (float32: per utterance without an error record, its\n"
    "  intent logits, then its tokens' slot logits; tests and the decoding benchmark) and times the decoding;\n"
    "  --weights_file model.nb reads an Android app directory (deploy/android/convert.py) as the app does, with\n"
    "  --tokenize_only or --logits_file;\n"
    "  --resolve_only: stdin lines \"slot type<TAB>text\" get their {\"value\", \"resolution\"} (tests);\n"
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
    else if (flag == "--context") args.context.push_back(value());
    else if (flag == "--sessions") args.sessions = true;
    else if (flag == "--cpu_threads") args.cpu_threads = std::stoi(value());
    else if (flag == "--runtime") args.runtime = value();
    else if (flag == "--precision") args.precision = value();
    else if (flag == "--min_confidence") args.min_confidence = std::stod(value());
    else if (flag == "--logits_file") args.logits_file = value();
    else if (flag == "--catalogue_file") args.catalogue_files.push_back(value());
    else if (flag == "--tokenize_only") args.tokenize_only = true;
    else if (flag == "--resolve_only") args.resolve_only = true;
    else if (flag == "--print_contract") args.print_contract = true;
    else if (flag == "--weights_file") args.weights_file = value();
    else throw std::invalid_argument("unknown flag " + flag);
  }
  if (args.model_dir.empty() && !args.print_contract) throw std::invalid_argument("--model_dir is required");
  if (args.runtime != "openvino" && args.runtime != "onnxruntime") throw std::invalid_argument("--runtime must be openvino or onnxruntime");
  if (args.runtime == "openvino" && args.precision != "f32" && args.precision != "bf16")
    throw std::invalid_argument("--precision must be f32 or bf16 on openvino");
  if (args.runtime == "onnxruntime" && args.precision != "f32" && args.precision != "int8")
    throw std::invalid_argument("--precision must be f32 or int8 on onnxruntime");
  slu::CheckMinConfidence(args.min_confidence);
  return args;
}

std::string TokensJson(const slu::Encoded& enc) {  // the model rows and token offsets (tests)
  std::string windows = "[", offsets = "[";
  for (const auto& w : enc.windows) {
    std::string row = "[";
    for (int64_t id : w) row += (row.size() > 1 ? ", " : "") + std::to_string(id);
    windows += (windows.size() > 1 ? ", " : "") + row + "]";
  }
  for (int o : enc.offsets) offsets += (offsets.size() > 1 ? ", " : "") + std::to_string(o);
  return "{\"windows\": " + windows + "], \"offsets\": " + offsets + "]}";
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
    slu::Model model(args.model_dir, args.weights_file);
    for (const std::string& path : args.catalogue_files) model.AddCatalogue(path);
    if (args.resolve_only) {
      for (const std::string& line : texts) {
        const size_t tab = line.find('\t');
        std::cout << model.ResolveJson(line.substr(0, tab), tab == std::string::npos ? "" : line.substr(tab + 1)) << "\n";
      }
      return 0;
    }
    if (!model.calibrated())  // as backends.open_predictor says it
      std::cerr << "warning: " << args.model_dir << ": confidences not calibrated (exported without a dev split; temperatures 1.0)\n";
    std::ifstream given_logits;
    if (!args.logits_file.empty()) {
      given_logits.open(args.logits_file, std::ios::binary);
      if (!given_logits) throw std::runtime_error(args.logits_file + ": cannot open");
    }
    const bool run_model = !args.tokenize_only && args.logits_file.empty();
    if (run_model && args.weights_file != slu::kParamsFile)
      throw std::invalid_argument("--weights_file " + args.weights_file + ": the desktop runtimes run model.pdiparams; use it with --tokenize_only or --logits_file");
    double decode_ms = 0;
    std::unique_ptr<slu::Engine> engine;
    if (run_model) {
      engine = args.runtime == "onnxruntime" ? slu::OnnxRuntimeEngine(model, args.precision, args.cpu_threads)
                                             : slu::OpenVinoEngine(model, args.precision, args.cpu_threads);
      slu::CheckEngine(model, *engine);  // one probe row before any answer: outputs of the label files' shapes, finite
    }
    const size_t window = model.max_seq_length() - 2;
    auto start = std::chrono::steady_clock::now();
    std::unordered_map<std::string, slu::History> histories;  // --sessions: per session id
    std::vector<double> answer_ms;  // per answered utterance: tokenization + model + decoding
    for (size_t n = 0; n < texts.size(); ++n) {
      const auto utterance_start = std::chrono::steady_clock::now();
      std::string text = texts[n], session_id, turn_error;
      const std::vector<std::string>* history = &args.context;
      if (args.sessions) {
        if (!slu::ParseTurn(texts[n], &session_id, &text, &turn_error)) {
          std::cout << slu::LineErrorJson(n + 1, turn_error) << "\n";
          continue;
        }
        history = &histories.emplace(session_id, model.NewHistory()).first->second.texts();
      }
      // the session's record, with "session_id" first in session mode
      auto emit = [&](const std::string& record) { std::cout << (args.sessions ? slu::WithSessionId(session_id, record) : record) << "\n"; };
      slu::Encoded enc;
      try {
        enc = model.Encode(text, *history);
      } catch (const std::invalid_argument& e) {  // malformed UTF-8: name the line
        std::cout << slu::LineErrorJson(n + 1, e.what()) << "\n";
        continue;
      }
      const std::string error = model.Check(enc);
      if (args.sessions && error.empty()) histories.at(session_id).Add(text);  // answered turns only (slu.h, History)
      if (args.tokenize_only) {
        std::cout << TokensJson(enc) << "\n";
        continue;
      }
      if (!error.empty()) {
        emit(slu::ErrorJson(text, error));
        continue;
      }
      if (enc.offsets.size() > window)
        std::cerr << "utterance " << n + 1 << ": " << enc.offsets.size() << " characters, predicted in " << enc.windows.size()
                  << " windows of " << window << "\n";
      std::vector<float> intent_logits, token_logits;
      if (run_model) {
        size_t seq_len = 0;
        std::vector<int64_t> padded = model.PadWindows(enc, &seq_len);
        if (engine->rows_alone() && enc.windows.size() > 1) {  // backends.per_row: each window alone, unpadded
          std::vector<float> slots(enc.windows.size() * seq_len * model.num_slot_tags(), 0.0f);  // pads keep zeros: nothing reads them
          for (size_t w = 0; w < enc.windows.size(); ++w) {
            engine->Run(enc.windows[w].data(), 1, enc.windows[w].size());
            if (w == 0) intent_logits.assign(engine->intent_logits(), engine->intent_logits() + model.num_intents());
            std::copy(engine->slot_logits(), engine->slot_logits() + enc.windows[w].size() * model.num_slot_tags(),
                      slots.begin() + w * seq_len * model.num_slot_tags());
          }
          token_logits = model.MergeWindows(enc, slots.data(), static_cast<int>(seq_len));
        } else {
          engine->Run(padded.data(), enc.windows.size(), seq_len);
          intent_logits.assign(engine->intent_logits(), engine->intent_logits() + model.num_intents());
          token_logits = model.MergeWindows(enc, engine->slot_logits(), static_cast<int>(seq_len));
        }
      } else {
        intent_logits.resize(model.num_intents());
        token_logits.resize(enc.offsets.size() * model.num_slot_tags());
        given_logits.read(reinterpret_cast<char*>(intent_logits.data()), intent_logits.size() * sizeof(float));
        given_logits.read(reinterpret_cast<char*>(token_logits.data()), token_logits.size() * sizeof(float));
        if (!given_logits) throw std::runtime_error(args.logits_file + ": ends before the logits of utterance " + std::to_string(n + 1));
      }
      auto decode_start = std::chrono::steady_clock::now();
      const std::string record = model.Describe(enc, intent_logits.data(), token_logits, args.min_confidence);
      const auto done = std::chrono::steady_clock::now();
      decode_ms += std::chrono::duration<double, std::milli>(done - decode_start).count();
      answer_ms.push_back(std::chrono::duration<double, std::milli>(done - utterance_start).count());
      emit(record);
    }
    if (given_logits.is_open() && given_logits.peek() != std::char_traits<char>::eof())
      throw std::runtime_error(args.logits_file + ": holds more logits than the utterances need");
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    std::sort(answer_ms.begin(), answer_ms.end());  // the median as numpy's: the mean of the middle two
    const size_t k = answer_ms.size();
    const double p50 = k == 0 ? 0.0 : (answer_ms[(k - 1) / 2] + answer_ms[k / 2]) / 2;
    std::cerr << (run_model ? engine->name() : std::string("given logits")) << ": " << texts.size()
              << " utterances in " << ms << " ms (tokenization + model + decoding); decoding " << decode_ms << " ms; per answer p50 "
              << p50 << " ms\n";
  } catch (const std::exception& e) {
    std::cerr << "slu_demo: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
