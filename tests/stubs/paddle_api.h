// The declarations of Paddle Lite's light API (paddle_api.h, v2.12) that deploy/android's JNI bridge
// uses, without bodies: tests/test_deploy_android.py compiles the bridge against it (syntax and
// types only; nothing is linked or run) because the Android NDK and Paddle Lite's library are not here.
#pragma once
#include <memory>
#include <string>
#include <vector>
namespace paddle { namespace lite_api {
enum PowerMode { LITE_POWER_HIGH };
using shape_t = std::vector<int64_t>;
struct Tensor { void Resize(std::vector<int64_t>); shape_t shape() const; template <typename T> T* mutable_data(); template <typename T> const T* data() const; };
struct MobileConfig { void set_model_from_file(const std::string&); void set_threads(int); void set_power_mode(PowerMode); };
struct PaddlePredictor { std::unique_ptr<Tensor> GetInput(int); std::unique_ptr<const Tensor> GetOutput(int); void Run(); };
template <typename C> std::shared_ptr<PaddlePredictor> CreatePaddlePredictor(const C&);
}}
