// JNI bridge of the Android app: Paddle Lite runs the .nb model; tokenization, decoding and the
// JSON result come from deploy/cpp/slu.cc, the code the desktop demo and its tests use.
#include <jni.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "paddle_api.h"
#include "slu.h"

namespace {

using paddle::lite_api::MobileConfig;

// The app ships the exported directory with model.nb (deploy/android/convert.py) in place of the Paddle graph.
using paddle::lite_api::PaddlePredictor;

class Session {
 public:
  Session(const std::string& model_dir, int threads, double min_confidence)
      : model_(model_dir, slu::kLiteModelFile), history_(model_.NewHistory()), min_confidence_(min_confidence) {
    slu::CheckMinConfidence(min_confidence);
    MobileConfig config;
    config.set_model_from_file(model_dir + "/" + slu::kLiteModelFile);
    config.set_threads(threads);
    config.set_power_mode(paddle::lite_api::LITE_POWER_HIGH);
    predictor_ = paddle::lite_api::CreatePaddlePredictor<MobileConfig>(config);
    // one probe row before any answer: outputs of the label files' shapes, finite (slu.h)
    std::vector<int64_t> probe = model_.ProbeRow();
    std::unique_ptr<paddle::lite_api::Tensor> input(predictor_->GetInput(0));
    input->Resize({1, static_cast<int64_t>(probe.size())});
    std::copy(probe.begin(), probe.end(), input->mutable_data<int64_t>());
    predictor_->Run();
    std::unique_ptr<const paddle::lite_api::Tensor> intent(predictor_->GetOutput(0));
    std::unique_ptr<const paddle::lite_api::Tensor> slots(predictor_->GetOutput(1));
    auto shape = [](const paddle::lite_api::Tensor& t) {
      std::vector<size_t> out;
      for (int64_t d : t.shape()) out.push_back(static_cast<size_t>(d));
      return out;
    };
    model_.CheckProbeOutputs(shape(*intent), intent->data<float>(), shape(*slots), slots->data<float>(), "paddle-lite");
  }

  // The next utterance (UTF-8) of the conversation -> the JSON line run_eval.py prints for it; a
  // context model reads it with the conversation's earlier utterances (since NewConversation).
  std::string Predict(const std::string& text) {
    slu::Encoded enc;
    try {
      enc = model_.Encode(text, history_.texts());
    } catch (const std::invalid_argument& e) {
      return slu::ErrorJson("", e.what());
    }
    const std::string error = model_.Check(enc);
    if (!error.empty()) return slu::ErrorJson(text, error);
    history_.Add(text);  // an answered turn (slu.h, History)
    size_t seq_len = 0;
    std::vector<int64_t> padded = model_.PadWindows(enc, &seq_len);
    std::unique_ptr<paddle::lite_api::Tensor> input(predictor_->GetInput(0));
    input->Resize({static_cast<int64_t>(enc.windows.size()), static_cast<int64_t>(seq_len)});
    std::copy(padded.begin(), padded.end(), input->mutable_data<int64_t>());
    predictor_->Run();
    std::unique_ptr<const paddle::lite_api::Tensor> intent(predictor_->GetOutput(0));
    std::unique_ptr<const paddle::lite_api::Tensor> slots(predictor_->GetOutput(1));
    return model_.Describe(enc, intent->data<float>(), model_.MergeWindows(enc, slots->data<float>(), static_cast<int>(seq_len)),
                           min_confidence_);
  }

  void NewConversation() { history_.Clear(); }

 private:
  slu::Model model_;
  slu::History history_;
  double min_confidence_;
  std::shared_ptr<PaddlePredictor> predictor_;
};

// Strings cross as UTF-8 byte arrays: JNI's own string functions use "modified UTF-8", which
// encodes characters outside the BMP (emoji) as surrogate pairs that slu.cc rightly rejects.
std::string FromBytes(JNIEnv* env, jbyteArray bytes) {
  jsize n = env->GetArrayLength(bytes);
  std::string out(static_cast<size_t>(n), '\0');
  env->GetByteArrayRegion(bytes, 0, n, reinterpret_cast<jbyte*>(&out[0]));
  return out;
}

jbyteArray ToBytes(JNIEnv* env, const std::string& s) {
  jbyteArray out = env->NewByteArray(static_cast<jsize>(s.size()));
  env->SetByteArrayRegion(out, 0, static_cast<jsize>(s.size()), reinterpret_cast<const jbyte*>(s.data()));
  return out;
}

void ThrowJava(JNIEnv* env, const std::exception& e) {
  env->ThrowNew(env->FindClass("java/lang/RuntimeException"), e.what());
}

}  // namespace

extern "C" JNIEXPORT jlong JNICALL Java_org_ernietiny_slu_SluPredictor_nativeCreate(JNIEnv* env, jclass, jbyteArray model_dir,
                                                                                      jint threads, jdouble min_confidence) {
  try {
    return reinterpret_cast<jlong>(new Session(FromBytes(env, model_dir), threads, min_confidence));
  } catch (const std::exception& e) {
    ThrowJava(env, e);
    return 0;
  }
}

extern "C" JNIEXPORT jbyteArray JNICALL Java_org_ernietiny_slu_SluPredictor_nativePredict(JNIEnv* env, jclass, jlong handle,
                                                                                          jbyteArray text) {
  try {
    return ToBytes(env, reinterpret_cast<Session*>(handle)->Predict(FromBytes(env, text)));
  } catch (const std::exception& e) {
    ThrowJava(env, e);
    return nullptr;
  }
}

// The files the app copies from its assets (slu::AppFiles: what convert.py writes).
extern "C" JNIEXPORT jbyteArray JNICALL Java_org_ernietiny_slu_SluPredictor_nativeAssetNames(JNIEnv* env, jclass) {
  std::string names;
  for (const std::string& name : slu::AppFiles()) names += (names.empty() ? "" : "\n") + name;
  return ToBytes(env, names);
}

extern "C" JNIEXPORT void JNICALL Java_org_ernietiny_slu_SluPredictor_nativeNewConversation(JNIEnv*, jclass, jlong handle) {
  reinterpret_cast<Session*>(handle)->NewConversation();
}

extern "C" JNIEXPORT void JNICALL Java_org_ernietiny_slu_SluPredictor_nativeRelease(JNIEnv*, jclass, jlong handle) {
  delete reinterpret_cast<Session*>(handle);
}
