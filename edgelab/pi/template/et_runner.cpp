// Runs model.pte with ExecuTorch's C++ runtime: no Python, no torch, just the shared libraries
// that the executorch wheel ships (lib/libexecutorch*.so). predict.py builds it once with the
// machine's g++ and talks to it through pipes:
//
//   et_runner MODEL.pte THREADS
//   stdout, first:  "ready IN_SIZES OUT_SIZES\n"  e.g. "ready 1,1,28,28 1,10"
//   then, for each float32 input of IN_SIZES read from stdin, its float32 output on stdout.
//
// Operators the XNNPACK delegate does not take run on the optimized (and portable) kernels,
// which register themselves when their library loads: hence --no-as-needed when linking.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/platform/runtime.h>

// The wheel ships no threadpool.h; these match what libexecutorch_threadpool.so exports.
namespace executorch::extension::threadpool {
class ThreadPool final {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

using executorch::extension::from_blob;
using executorch::extension::Module;
using executorch::runtime::Error;
using executorch::runtime::to_string;

static int fail(const std::string& what) {
  std::fprintf(stderr, "et_runner: error: %s\n", what.c_str());
  return 1;
}

static std::string join(const std::vector<int32_t>& sizes) {
  std::string s;
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? "," : "") + std::to_string(sizes[i]);
  return s;
}

int main(int argc, char** argv) {
  if (argc != 3) return fail("usage: et_runner MODEL.pte THREADS");
  // the protocol owns stdout: anything a library prints goes to stderr instead
  FILE* out_stream = fdopen(dup(1), "wb");
  if (out_stream == nullptr || dup2(2, 1) < 0) return fail("cannot set up stdout");
  executorch::runtime::runtime_init();
  char* end = nullptr;
  const long threads = std::strtol(argv[2], &end, 10);
  if (*end != '\0' || threads < 1 || threads > 1024)
    return fail(std::string("THREADS must be a whole number from 1 to 1024, not ") + argv[2]);
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool == nullptr || !pool->_unsafe_reset_threadpool(uint32_t(threads)))
    return fail("could not set the XNNPACK thread pool to " + std::to_string(threads));

  Module module(argv[1], Module::LoadMode::File);
  const Error loaded = module.load();
  if (loaded != Error::Ok)
    return fail(std::string("cannot load the program ") + argv[1] + " (" + to_string(loaded) + ")");
  auto meta = module.method_meta("forward");
  if (!meta.ok()) return fail("the program has no 'forward' method");
  if (meta->num_inputs() != 1 || meta->num_outputs() != 1)
    return fail("the program must take one tensor and return one");
  auto in = meta->input_tensor_meta(0);
  auto out = meta->output_tensor_meta(0);
  if (!in.ok() || !out.ok() || in->scalar_type() != executorch::aten::ScalarType::Float ||
      out->scalar_type() != executorch::aten::ScalarType::Float)
    return fail("the program must take and return float32 tensors");
  std::vector<int32_t> in_sizes(in->sizes().begin(), in->sizes().end());
  std::vector<int32_t> out_sizes(out->sizes().begin(), out->sizes().end());
  size_t in_numel = 1, out_numel = 1;
  for (auto d : in_sizes) in_numel *= d;
  for (auto d : out_sizes) out_numel *= d;
  const Error method = module.load_forward();
  if (method != Error::Ok)
    return fail(std::string("cannot load the 'forward' method (") + to_string(method) + ")");

  std::fprintf(out_stream, "ready %s %s\n", join(in_sizes).c_str(), join(out_sizes).c_str());
  std::fflush(out_stream);
  std::vector<float> x(in_numel);
  while (true) {
    size_t got = std::fread(x.data(), sizeof(float), in_numel, stdin);
    if (got == 0 && std::feof(stdin)) return 0;   // the caller closed the pipe: done
    if (got != in_numel) return fail("short input: expected " + std::to_string(in_numel) +
                                     " float32 values, got " + std::to_string(got));
    auto tensor = from_blob(x.data(), {in_sizes.begin(), in_sizes.end()});
    auto result = module.forward(tensor);
    if (!result.ok())
      return fail(std::string("forward failed (") + to_string(result.error()) + ")");
    const auto& y = result->at(0).toTensor();
    if (size_t(y.numel()) != out_numel) return fail("the output has an unexpected size");
    std::fwrite(y.const_data_ptr<float>(), sizeof(float), out_numel, out_stream);
    std::fflush(out_stream);
  }
}
