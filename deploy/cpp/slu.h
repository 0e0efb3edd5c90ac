// The export contract (export_format.py) and the prediction path (predictor.py) in C++: reading
// and validating an exported directory, tokenization, windows, decoding and the result record,
// with the same results as Python. Shared by the desktop demo (infer_demo.cc, OpenVINO) and the
// Android JNI code (Paddle Lite). Its one dependency is nlohmann/json, vendored in third_party/.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace slu {

// The export contract, as export_format.py states it (tests/test_deploy_cpp.py compares the two).
constexpr int kFormatVersion = 5;
constexpr const char* kGraphFile = "model.pdmodel";
constexpr const char* kParamsFile = "model.pdiparams";
constexpr const char* kVocabFile = "vocab.txt";
constexpr const char* kIntentLabelFile = "intent_label.txt";
constexpr const char* kSlotLabelFile = "slot_label.txt";
constexpr const char* kCatalogueFile = "catalogue.jsonl";
constexpr const char* kPinyinFile = "pinyin.txt";
constexpr const char* kConfigFile = "inference_config.json";
constexpr const char* kManifestFile = "manifest.json";
constexpr const char* kLiteModelFile = "model.nb";  // the Android app's weights and graph (Paddle Lite)
// onnx_graph.py: the ONNX Runtime engine's graphs beside an export (deploy/cpp/convert_onnx.py), and
// the metadata key that names the export they were converted from (Model::OnnxSourceStamp).
constexpr const char* kOnnxFile = "model.onnx";
constexpr const char* kOnnxInt8File = "model.int8.onnx";
constexpr const char* kOnnxSourceKey = "slu.source_sha256";
extern const std::vector<std::string> kFiles;          // every file of an exported directory
extern const std::vector<std::string> kRequiredKeys;   // of inference_config.json
extern const std::vector<std::string> kOutputRoles;    // graph outputs, in fetch order
// The Android app's model directory (exporting.export_app): model.nb and every file of an exported
// directory but model.pdiparams (model.pdmodel stays: slu::Model checks its embedding tables).
std::vector<std::string> AppFiles();
std::string ContractJson();                            // the above as one JSON object

// The result records of predictor.py.
constexpr const char* kEmptyUtterance = "empty utterance";
constexpr const char* kInvalidUtf8 = "invalid UTF-8";
constexpr const char* kNotATurn = "expected a JSON object with string \"session_id\" and \"text\"";
std::string TooLongError(size_t num_tokens, size_t limit);

// Code points of a UTF-8 string; throws std::invalid_argument on malformed UTF-8.
std::u32string DecodeUtf8(const std::string& text);
std::string EncodeUtf8(const std::u32string& text);
bool CarriesToken(char32_t c);  // task.carries_token: not whitespace, control or format character

struct Encoded {
  std::u32string text;
  std::vector<int> offsets;                  // code-point offset of every token in text
  // model rows, one per window: [CLS] + up to max_seq_length-2 utterance ids + [SEP] + context ids
  std::vector<std::vector<int64_t>> windows;
  std::vector<std::pair<size_t, size_t>> bounds;  // utterance tokens [start, end) of each row
};

// The earlier utterances of one session, the last `turns` of them (task.session_histories). Only
// turns that were answered join it (a turn whose record is an error, e.g. an empty or over-long
// utterance, does not): the one definition of a session turn, predictor.Predictor.predict_sessions.
class History {
 public:
  explicit History(size_t turns = 0) : turns_(turns) {}
  const std::vector<std::string>& texts() const { return texts_; }  // oldest first
  void Add(const std::string& utf8_text);
  void Clear() { texts_.clear(); }

 private:
  size_t turns_;
  std::vector<std::string> texts_;
};

// values.py: the key values are compared by (the folded token-carrying characters), the digits
// rule ("" when the text is not a spoken or written digit string), and the catalogue of slot values.
std::string ValueKey(const std::u32string& text);
std::string Digits(const std::u32string& text);
std::string Fuzzy(const std::string& syllable);  // values.fuzzy
class Catalogue {
 public:
  // Add the entries of a catalogue JSON lines file; throws std::runtime_error "path:line: problem"
  // (values.read_catalogue's words) for a bad line or a slot type outside `slot_types`.
  void Read(const std::string& path, const std::vector<std::string>& slot_types);
  // The pinyin table of the export (values.read_pinyin): character -> toneless readings.
  void ReadPinyin(const std::string& path);
  // (value, resolution) of a slot's text as heard: exact, catalogue, pronunciation, rule or none
  // (values.Catalogue.resolve).
  std::pair<std::string, std::string> Resolve(const std::string& slot_type, const std::u32string& heard) const;
  int SoundDistance(const std::string& key_a, const std::string& key_b) const;  // values.Catalogue.sound_distance

 private:
  struct Syllable {
    std::vector<std::string> readings, folded;
  };
  void Add(const std::string& slot_type, const std::string& value, const std::vector<std::string>& synonyms);
  std::vector<Syllable> Syllables(const std::string& key) const;
  std::vector<std::string> IndexKeys(const std::string& slot_type, const std::string& key) const;
  // values.Catalogue.sound_match: true with *value set when one value sounds closest within the bound
  bool SoundMatch(const std::string& slot_type, const std::string& key, std::string* value) const;
  void BuildSoundIndex() const;
  using ByKey = std::unordered_map<std::string, std::unordered_map<std::string, std::vector<std::string>>>;
  ByKey values_, synonyms_;  // slot type -> key -> distinct canonical values
  std::unordered_map<std::string, std::string> rules_;
  std::unordered_map<std::string, std::vector<std::string>> pinyin_;
  // sound index key -> (canonical value, key heard as); built on first use, dropped when entries change
  mutable std::unordered_map<std::string, std::vector<std::pair<std::string, std::string>>> sounds_;
  mutable bool sounds_built_ = false;
};

// What decoding needs of inference_config.json (decoding.py: Calibration, SlotConstraints, CRF).
struct Decoding {
  double intent_temperature = 1.0, slot_temperature = 1.0;
  std::vector<double> transitions;              // [tags x tags] (previous, current); empty: no CRF
  std::vector<char> start_ok, transition_ok;    // BIO: tags that may open an utterance / follow a tag
  std::vector<double> step;                     // score a path adds per step: CRF's (or 0), -inf where BIO forbids [tags x tags]
  std::vector<double> moves;                    // exp(transition score), 0 where BIO forbids [tags x tags]
  std::vector<int> inside_tag;                  // per tag: the I- tag of its type, -1 for none
  std::vector<std::vector<char>> intent_tags;   // [intents][tags] allowed under each intent
};

// decoding.cc. `step` and `moves` from transition_ok and transitions (decoding.transition_scores).
void PrepareTables(Decoding* d);
// decoding.softmax64 of one row: softmax(logits / temperature) in double.
std::vector<double> Softmax(const float* logits, size_t n, double temperature);
// decoding.viterbi: the best tag path of token_logits [n x tags] (row-major) under the intent's
// allowed tags, the BIO masks and the CRF transitions if any.
std::vector<int> DecodeTags(const Decoding& d, const float* token_logits, size_t n, size_t intent);
// decoding.span_confidences: each span's (start, end-exclusive) marginal probability at slot
// temperature `temperature` (forward-backward over the paths the intent allows).
std::vector<double> SpanConfidences(const Decoding& d, const float* token_logits, const std::vector<int>& tag_ids,
                                    const std::vector<std::pair<int, int>>& spans, size_t intent, double temperature);

// An exported model directory, read and checked as export_format.read does (every file against
// inference_config.json, the weights whole and finite, then every file against manifest.json);
// throws std::runtime_error naming the file and the problem. `weights_file`: the app's model.nb
// stands in for model.pdiparams (its manifest lists it; its format is not read here).
class Model {
 public:
  explicit Model(const std::string& model_dir, const std::string& weights_file = kParamsFile);

  // Why an utterance gets no prediction (the error of its record), or "" (predictor.Predictor.check).
  std::string Check(const Encoded& enc) const;

  // One token per character that carries one, folded as task.normalize_char does.
  std::vector<int> Tokenize(const std::u32string& text, std::vector<int>* offsets) const;
  // task.Task.encode: overlapping windows of the utterance, each followed by the context segment
  // built from `history` (the session's earlier utterances, oldest first; throws
  // std::invalid_argument if the utterance or a history text is not UTF-8).
  Encoded Encode(const std::string& utf8_text, const std::vector<std::string>& history = {}) const;
  std::vector<int64_t> ContextIds(const std::vector<std::string>& history) const;  // task.Task.context_ids
  History NewHistory() const { return History(context_turns_); }
  // Add a user's catalogue (values.py's JSON lines) to the export's catalogue.jsonl.
  void AddCatalogue(const std::string& path) { catalogue_.Read(path, slot_types_); }
  // {"value", "resolution"} of a slot type's text as heard (tests: values.py parity on the corpus).
  std::string ResolveJson(const std::string& slot_type, const std::string& utf8_text) const;

  // The windows as one row-major [windows x seq_len] id block, padded to the longest with
  // [PAD] (utils.pad_batch): the model input of one utterance.
  std::vector<int64_t> PadWindows(const Encoded& enc, size_t* seq_len) const;

  // The slot logits of every token of the utterance, each from the window that keeps it
  // (task.window_keeps): [tokens x tags] (predictor.merge_windows), from slot_logits
  // [windows x seq_len x tags], row-major.
  std::vector<float> MergeWindows(const Encoded& enc, const float* slot_logits, int seq_len) const;

  // The JSON result of one utterance (predictor.describe): intent_logits of its first window
  // [intents], token_logits [tokens x tags] from MergeWindows. Slots by constrained Viterbi,
  // confidences calibrated, "fallback" when the weakest is below min_confidence (decoding.py).
  std::string Describe(const Encoded& enc, const float* intent_logits, const std::vector<float>& token_logits,
                       double min_confidence = 0.0) const;

  // export_format.check_graph_outputs: the probe row ([CLS], the last vocabulary id, [SEP]) to run
  // through the loaded graph once, and the check of its outputs (shapes against the label files,
  // all finite); throws std::runtime_error naming the files, as Python does.
  std::vector<int64_t> ProbeRow() const { return {cls_id_, static_cast<int64_t>(token_to_id_.size()) - 1, sep_id_}; }
  void CheckProbeOutputs(const std::vector<size_t>& intent_shape, const float* intent, const std::vector<size_t>& slot_shape,
                         const float* slots, const std::string& runtime) const;

  // export_format.check_graph_tables, on model.pdmodel read at the protobuf wire level (called by the constructor).
  void CheckGraphTables() const;

  // onnx_graph.source_stamp: manifest.json's sha256 of model.pdmodel and model.pdiparams, "<graph> <weights>".
  std::string OnnxSourceStamp() const;
  bool calibrated() const { return calibrated_; }  // calibration.fitted_on is not null
  int max_seq_length() const { return max_seq_length_; }
  int context_turns() const { return context_turns_; }
  const std::string& graph_path() const { return graph_path_; }
  const std::string& model_dir() const { return model_dir_; }
  size_t num_intents() const { return intents_.size(); }
  size_t num_slot_tags() const { return slot_tags_.size(); }

 private:
  std::unordered_map<std::string, int> token_to_id_;
  std::vector<std::string> intents_, slot_tags_, slot_types_;
  Catalogue catalogue_;
  int pad_id_ = 0, cls_id_ = 0, sep_id_ = 0, unk_id_ = 0, max_seq_length_ = 0, context_turns_ = 0, max_context_tokens_ = 0;
  Decoding decoding_;
  size_t max_utterance_tokens_ = 0;
  bool calibrated_ = false;
  std::string graph_path_, model_dir_;
  std::map<std::string, std::string> recorded_sha256_;  // manifest.json's, by file name
};

// BIO spans (type, start, end-exclusive), conlleval style, as task.bio_spans.
struct Span {
  std::string type;
  int start, end;
};
std::vector<Span> BioSpans(const std::vector<std::string>& tags);

std::string ErrorJson(const std::string& utf8_text, const std::string& error);
// predictor.Predictor's check of min_confidence: in [0, 1] (NaN is not); throws std::invalid_argument.
void CheckMinConfidence(double min_confidence);
std::string LineErrorJson(size_t line, const std::string& error);  // {"line": N, "error": ...}

// One line of session input (predictor.parse_turn): true with *session_id and *text set, or false
// with *error set (kInvalidUtf8 or kNotATurn).
bool ParseTurn(const std::string& line, std::string* session_id, std::string* text, std::string* error);
std::string WithSessionId(const std::string& session_id, const std::string& record_json);  // "session_id" first

}  // namespace slu
