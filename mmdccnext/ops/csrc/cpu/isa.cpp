// ISA dispatch of the DCConv CPU kernels: which copy (dcconv::avx512 / avx2 / generic, see
// common/dcconv_common.h) runs. Chosen once, on the first kernel call, from CPU *features*:
// __builtin_cpu_supports (libgcc's cpuid check, which also requires the OS to save the
// registers the ISA uses: XCR0 for ymm / zmm), never from the CPU model. Forced with the
// environment variable MMDCCNEXT_CPU_ISA (read at that first call, and again after
// reset_isa()) or with set_isa(); forcing a copy the CPU cannot run raises a RuntimeError
// naming the missing features, so no kernel of it is ever executed.
#include "../common/dcconv_common.h"

namespace dcconv {
namespace {

constexpr const char* kEnvVar = "MMDCCNEXT_CPU_ISA";

struct IsaSpec {
  Isa isa;
  const char* name;
  std::vector<std::string> features;  // what the copy's target pragma enables
};

// Best first. The features must be those of the target pragmas in common/isa_instantiate.h.
const std::vector<IsaSpec>& specs() {
  static const std::vector<IsaSpec> all = {
      {Isa::avx512, "avx512", {"avx512f", "avx2", "fma", "popcnt"}},
      {Isa::avx2, "avx2", {"avx2", "fma", "popcnt"}},
      {Isa::generic, "generic", {}},
  };
  return all;
}

bool compiled(Isa isa) { return isa == Isa::generic || DCCONV_X86_ISAS; }

bool has_feature(const std::string& f) {
#if DCCONV_X86_ISAS
  __builtin_cpu_init();  // harmless if already done; needed if called before constructors
  if (f == "avx512f") return __builtin_cpu_supports("avx512f");
  if (f == "avx2") return __builtin_cpu_supports("avx2");
  if (f == "fma") return __builtin_cpu_supports("fma");
  if (f == "popcnt") return __builtin_cpu_supports("popcnt");
#endif
  (void)f;
  return false;
}

std::vector<std::string> missing_features(const IsaSpec& spec) {
  std::vector<std::string> out;
  for (const auto& f : spec.features)
    if (!has_feature(f)) out.push_back(f);
  return out;
}

bool runnable(const IsaSpec& spec) { return compiled(spec.isa) && missing_features(spec).empty(); }

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& e : v) s += (s.empty() ? "" : ", ") + e;
  return s.empty() ? "none" : s;
}

std::string lower_trim(const std::string& in) {
  std::string s;
  for (char ch : in)
    if (ch != ' ' && ch != '\t' && ch != '\n') s += static_cast<char>(std::tolower(ch));
  return s;
}

Isa best_supported() {
  for (const auto& spec : specs())
    if (runnable(spec)) return spec.isa;
  return Isa::generic;
}

// The ISA named `name` ('auto' or '': the best this CPU runs), or an error naming what is
// missing. `origin` says where the name came from, for the message.
Isa parse_checked(const std::string& raw, const std::string& origin) {
  const std::string name = lower_trim(raw);
  if (name.empty() || name == "auto") return best_supported();
  std::vector<std::string> names;
  for (const auto& spec : specs()) names.push_back(spec.name);
  for (const auto& spec : specs()) {
    if (name != spec.name) continue;
    TORCH_CHECK(compiled(spec.isa), origin, "the ", spec.name,
                " kernels are not compiled in this build of mmdccnext._ext (they need x86-64 "
                "and GCC); compiled: ",
                join(compiled_isas()));
    const auto missing = missing_features(spec);
    TORCH_CHECK(missing.empty(), origin, "the ", spec.name,
                " kernels of mmdccnext._ext need the CPU features ", join(spec.features),
                ", and this CPU lacks ", join(missing),
                ". ISAs this CPU can run: ", join(supported_isas()), ".");
    return spec.isa;
  }
  TORCH_CHECK_VALUE(false, origin, "unknown ISA '", raw, "': use one of ", join(names),
                    " or auto");
  return Isa::generic;  // not reached
}

std::atomic<int> g_isa{-1};  // -1: not chosen yet
std::mutex g_mutex;

}  // namespace

const char* isa_name(Isa isa) {
  for (const auto& spec : specs())
    if (spec.isa == isa) return spec.name;
  return "generic";
}

Isa current_isa() {
  const int v = g_isa.load(std::memory_order_acquire);
  if (v >= 0) return static_cast<Isa>(v);
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_isa.load() < 0) {
    const char* env = std::getenv(kEnvVar);
    const std::string value = env ? env : "";
    // throws (and chooses nothing) if the variable names an ISA this CPU cannot run
    const Isa isa = parse_checked(value, std::string(kEnvVar) + "=" + value + ": ");
    g_isa.store(static_cast<int>(isa), std::memory_order_release);
  }
  return static_cast<Isa>(g_isa.load());
}

std::string isa_name_str() { return isa_name(current_isa()); }

std::vector<std::string> compiled_isas() {
  std::vector<std::string> out;
  for (const auto& spec : specs())
    if (compiled(spec.isa)) out.push_back(spec.name);
  return out;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const auto& spec : specs())
    if (runnable(spec)) out.push_back(spec.name);
  return out;
}

std::vector<std::pair<std::string, bool>> cpu_features() {
  std::vector<std::pair<std::string, bool>> out;
  if (!DCCONV_X86_ISAS) return out;
  for (const char* f : {"avx512f", "avx2", "fma", "popcnt"}) out.emplace_back(f, has_feature(f));
  return out;
}

void set_isa(const std::string& name) {
  const Isa isa = parse_checked(name, "set_isa: ");
  std::lock_guard<std::mutex> lock(g_mutex);
  g_isa.store(static_cast<int>(isa), std::memory_order_release);
}

void reset_isa() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_isa.store(-1, std::memory_order_release);
}

}  // namespace dcconv
