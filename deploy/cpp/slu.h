// Tokenization and decoding of the joint intent + slot model, in C++ with no dependency: the
// same results as utils.py (CharTokenizer, encode_for_inference, merge_windows, describe).
// Shared by the desktop demo (infer_demo.cc, OpenVINO) and the Android JNI code (Paddle Lite).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace slu {

// Code points of a UTF-8 string; throws std::invalid_argument on malformed UTF-8.
std::u32string DecodeUtf8(const std::string& text);
std::string EncodeUtf8(const std::u32string& text);
bool IsSpace(char32_t c);  // Python's str.isspace()
bool IsBlank(const std::u32string& text);

struct Encoded {
  std::u32string text;
  std::vector<int> offsets;                  // code-point offset of every token in text
  std::vector<std::vector<int64_t>> windows;  // [CLS] + up to max_seq_length-2 ids + [SEP]
};

// An exported model directory's vocabulary, labels and window length (vocab.txt,
// intent_label.txt, slot_label.txt, inference_config.json).
class Model {
 public:
  explicit Model(const std::string& model_dir);

  // One token per non-whitespace character, folded as utils.normalize_char does.
  std::vector<int> Tokenize(const std::u32string& text, std::vector<int>* offsets) const;
  Encoded Encode(const std::string& utf8_text) const;

  // The windows as one row-major [windows x seq_len] id block, padded to the longest with
  // [PAD] (utils.pad_batch): the model input of one utterance.
  std::vector<int64_t> PadWindows(const Encoded& enc, size_t* seq_len) const;

  // The JSON result of one utterance from the logits of its windows, in window order:
  // intent_logits [windows x intents], slot_logits [windows x seq_len x tags], row-major.
  std::string Describe(const Encoded& enc, const float* intent_logits, const float* slot_logits, int seq_len) const;

  int max_seq_length() const { return max_seq_length_; }
  size_t num_intents() const { return intents_.size(); }
  size_t num_slot_tags() const { return slot_tags_.size(); }

 private:
  std::unordered_map<std::string, int> token_to_id_;
  std::vector<std::string> intents_, slot_tags_;
  int pad_id_ = 0, cls_id_ = 0, sep_id_ = 0, unk_id_ = 0, max_seq_length_ = 0;
};

// BIO spans (type, start, end-exclusive), conlleval style, as utils.bio_spans.
struct Span {
  std::string type;
  int start, end;
};
std::vector<Span> BioSpans(const std::vector<std::string>& tags);

std::string JsonString(const std::string& utf8);  // as json.dumps(..., ensure_ascii=False)
std::string ErrorJson(const std::string& utf8_text, const std::string& error);

}  // namespace slu
