// The C interface of decoding.cc that decoding.py loads with ctypes: build/libslu_decoding.so,
// built by `make setup` (g++ only, no other dependency). Arrays are C-contiguous; char arrays
// hold 0/1. A call returns -1 when it failed (an intent out of range, no memory).
#include <algorithm>

#include "slu.h"

extern "C" {

// A Decoding from decoding.SlotConstraints' tables: start_ok [tags], transition_ok [tags x tags],
// transitions [tags x tags] or null (no CRF), intent_tags [intents x tags], inside_tag [tags]
// (the I- tag of each tag's type, -1 for none). Null when out of memory.
void* slu_decoding_new(int tags, int intents, const char* start_ok, const char* transition_ok, const double* transitions,
                       const char* intent_tags, const int* inside_tag) {
  try {
    auto* d = new slu::Decoding;
    d->start_ok.assign(start_ok, start_ok + tags);
    d->transition_ok.assign(transition_ok, transition_ok + tags * tags);
    if (transitions) d->transitions.assign(transitions, transitions + tags * tags);
    for (int i = 0; i < intents; ++i) d->intent_tags.emplace_back(intent_tags + i * tags, intent_tags + (i + 1) * tags);
    d->inside_tag.assign(inside_tag, inside_tag + tags);
    slu::PrepareTables(d);
    return d;
  } catch (...) {
    return nullptr;
  }
}

void slu_decoding_free(void* decoding) { delete static_cast<slu::Decoding*>(decoding); }

// One utterance as decoding.Decoder decodes it: returns the intent (the first maximum of
// intent_logits [intents]) and writes intent_probs [intents] (decoding.softmax64 at
// intent_temperature) and tag_ids [tokens] (decoding.viterbi of token_logits [tokens x tags] under
// that intent); -1 on failure.
int slu_decode(const void* decoding, const float* intent_logits, int intents, double intent_temperature, const float* token_logits,
               int tokens, double* intent_probs, int* tag_ids) {
  const auto& d = *static_cast<const slu::Decoding*>(decoding);
  if (intents != static_cast<int>(d.intent_tags.size())) return -1;
  try {
    const int intent = static_cast<int>(std::max_element(intent_logits, intent_logits + intents) - intent_logits);
    const std::vector<double> probs = slu::Softmax(intent_logits, intents, intent_temperature);
    std::copy(probs.begin(), probs.end(), intent_probs);
    const std::vector<int> path = slu::DecodeTags(d, token_logits, tokens, intent);
    std::copy(path.begin(), path.end(), tag_ids);
    return intent;
  } catch (...) {
    return -1;
  }
}

// confidences [num_spans] <- decoding.span_confidences of the spans [num_spans x 2] (start,
// end-exclusive) of the path tag_ids [tokens], at slot temperature `temperature`; 0, or -1.
int slu_span_confidences(const void* decoding, const float* token_logits, const int* tag_ids, int tokens, int intent,
                         double temperature, const int* spans, int num_spans, double* confidences) {
  const auto& d = *static_cast<const slu::Decoding*>(decoding);
  if (intent < 0 || static_cast<size_t>(intent) >= d.intent_tags.size()) return -1;
  try {
    std::vector<std::pair<int, int>> bounds;
    for (int k = 0; k < num_spans; ++k) bounds.emplace_back(spans[2 * k], spans[2 * k + 1]);
    const std::vector<double> out = slu::SpanConfidences(d, token_logits, std::vector<int>(tag_ids, tag_ids + tokens), bounds, intent, temperature);
    std::copy(out.begin(), out.end(), confidences);
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
