// NHWC x HWIO (grouped) 2D convolutions run by oneDNN, as XLA FFI handlers.
// float32 or bfloat16 (operands and result of one type; oneDNN accumulates
// bfloat16 products in float32).
//
// Three handlers, one per direction of the convolution y = conv(x, w):
//   nfnets_conv_forward(x, w) -> y
//   nfnets_conv_backward_data(dy, w) -> dx
//   nfnets_conv_backward_weights(x, dy) -> dw
// Attributes: groups (int64), strides (int64[2]), pads (int64[4]: top, bottom,
// left, right). Shapes come from the buffers: x [N, H, W, C], w [KH, KW, C /
// groups, O], y [N, OH, OW, O]. nfnets_onednn_native_bf16() says whether the
// CPU has bfloat16 instructions oneDNN uses (AVX512-BF16, AMX or
// AVX2-VNNI-2); without them oneDNN has no bfloat16 convolution. Built by
// nfnets_jax/kernels/build.py.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

static_assert(DNNL_VERSION_MAJOR >= 3, "nfnets_jax needs oneDNN 3.x");

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;

namespace {

enum class Direction { kForward, kBackwardData, kBackwardWeights };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, groups, sh, sw, pt, pb, pl, pr;
  memory::data_type type;

  memory::desc Src() const { return {{n, c, h, w}, type, Tag::nhwc}; }
  memory::desc Dst() const { return {{n, o, oh, ow}, type, Tag::nhwc}; }
  // HWIO as oneDNN sees it (its logical order is OIHW, or GOIHW when grouped).
  memory::desc Weights(bool any) const {
    if (groups == 1) return {{o, c, kh, kw}, type, any ? Tag::any : Tag::hwio};
    return {{groups, o / groups, c / groups, kh, kw}, type, any ? Tag::any : Tag::hwigo};
  }
  // A stride-1 1x1 convolution, whose backward directions are matmuls.
  bool Pointwise() const {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && groups == 1 && !(pt | pb | pl | pr);
  }
  std::string Key(Direction d) const {
    std::string key = std::to_string(static_cast<int>(d));
    for (int64_t v : {n, h, w, c, kh, kw, o, groups, sh, sw, pt, pb, pl, pr,
                      static_cast<int64_t>(type)})
      key += "," + std::to_string(v);
    return key;
  }
};

// A primitive for one geometry and direction. Its weights are in the layout
// oneDNN picks (`any`: its blocked layouts are much faster than HWIO), with a
// reorder from (or, for the weight gradient, to) the HWIO buffer.
struct Plan {
  dnnl::primitive primitive;
  memory::desc weights, user_weights;
  dnnl::primitive reorder;
  bool reordered = false;
  size_t scratch_bytes = 0;
};

void Fill(Plan& plan, dnnl::primitive primitive, const dnnl::primitive_desc_base& pd,
          const memory::desc& weights) {
  plan.primitive = primitive;
  plan.weights = weights;
  plan.scratch_bytes = pd.scratchpad_desc().get_size();
}

std::shared_ptr<Plan> MakePlan(Direction d, const Geometry& g) {
  // The user scratchpad makes each primitive safe to run from several threads.
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const memory::dims strides{g.sh, g.sw}, pad_l{g.pt, g.pl}, pad_r{g.pb, g.pr};
  const auto algo = dnnl::algorithm::convolution_direct;
  dnnl::convolution_forward::primitive_desc fwd(
      Engine(), dnnl::prop_kind::forward_training, algo, g.Src(), g.Weights(true), g.Dst(),
      strides, pad_l, pad_r, attr);
  auto plan = std::make_shared<Plan>();
  plan->user_weights = g.Weights(false);
  if (d == Direction::kForward) {
    Fill(*plan, dnnl::convolution_forward(fwd), fwd, fwd.weights_desc());
  } else if (d == Direction::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), algo, g.Src(), g.Weights(true), g.Dst(), strides, pad_l, pad_r, fwd, attr);
    Fill(*plan, dnnl::convolution_backward_data(pd), pd, pd.weights_desc());
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), algo, g.Src(), g.Weights(true), g.Dst(), strides, pad_l, pad_r, fwd, attr);
    Fill(*plan, dnnl::convolution_backward_weights(pd), pd, pd.diff_weights_desc());
  }
  plan->reordered = plan->weights != plan->user_weights;
  if (plan->reordered) {
    const bool to_user = d == Direction::kBackwardWeights;
    plan->reorder = dnnl::reorder(dnnl::reorder::primitive_desc(
        Engine(), to_user ? plan->weights : plan->user_weights, Engine(),
        to_user ? plan->user_weights : plan->weights));
  }
  return plan;
}

// The backward directions of a stride-1 1x1 convolution are matmuls
// a @ b = c over the M = N * H * W pixels, whose transposed operands oneDNN
// reads in place (its `ba` layout):
//   backward data:    dy [M, O] @ w^T [O, C] = dx [M, C]
//   backward weights: x^T [C, M] @ dy [M, O] = dw [C, O]
// oneDNN's matmul packs its operands itself, where its 1x1 backward
// convolutions need the weights reordered to or from a blocked layout on every
// call: NFNet-F0's training step (128 px, batch 8) ran about 4% faster. The
// forward direction stays a convolution, 3% faster than the matmul in F0's
// inference forward pass at 256 px (README, "Convolutions on CPU").
struct MatmulPlan {
  dnnl::primitive primitive;
  memory::desc a, b, c;
  size_t scratch_bytes = 0;
};

std::shared_ptr<MatmulPlan> MakeMatmulPlan(Direction d, const Geometry& g) {
  const int64_t m = g.n * g.h * g.w;
  const auto matrix = [&g](int64_t rows, int64_t cols, bool transposed) {
    return memory::desc({rows, cols}, g.type, transposed ? Tag::ba : Tag::ab);
  };
  auto plan = std::make_shared<MatmulPlan>();
  const bool data = d == Direction::kBackwardData;
  plan->a = data ? matrix(m, g.o, false) : matrix(g.c, m, true);
  plan->b = data ? matrix(g.o, g.c, true) : matrix(m, g.o, false);
  plan->c = data ? matrix(m, g.c, false) : matrix(g.c, g.o, false);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::matmul::primitive_desc pd(Engine(), plan->a, plan->b, plan->c, attr);
  plan->primitive = dnnl::matmul(pd);
  plan->scratch_bytes = pd.scratchpad_desc().get_size();
  return plan;
}

// Plans are built once per geometry: building one costs far more than a call.
template <typename P>
std::shared_ptr<P> GetPlan(Direction d, const Geometry& g,
                           std::shared_ptr<P> (*make)(Direction, const Geometry&)) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<P>> plans;
  const std::string key = g.Key(d);
  std::lock_guard<std::mutex> lock(mutex);
  auto& plan = plans[key];
  if (!plan) plan = make(d, g);
  return plan;
}

struct Aligned {
  void* data = nullptr;
  explicit Aligned(size_t bytes) {
    if (bytes) data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  }
  ~Aligned() { std::free(data); }
};

memory Scratchpad(const Aligned& scratch, size_t bytes) {
  return memory({{static_cast<int64_t>(bytes)}, memory::data_type::u8, Tag::x}, Engine(),
                scratch.data);
}

// x, w and y are the forward convolution's operands: under kBackwardData x is
// the result (dx) and y the output gradient, under kBackwardWeights w is the
// result (dw).
void RunMatmul(Direction d, const Geometry& g, void* x, void* w, void* y) {
  auto plan = GetPlan(d, g, MakeMatmulPlan);
  void* a = d == Direction::kBackwardData ? y : x;
  void* b = d == Direction::kBackwardData ? w : y;
  void* c = d == Direction::kBackwardData ? x : w;
  dnnl::stream stream(Engine());
  Aligned scratch(plan->scratch_bytes);
  plan->primitive.execute(stream, {{DNNL_ARG_SRC, memory(plan->a, Engine(), a)},
                                   {DNNL_ARG_WEIGHTS, memory(plan->b, Engine(), b)},
                                   {DNNL_ARG_DST, memory(plan->c, Engine(), c)},
                                   {DNNL_ARG_SCRATCHPAD,
                                    Scratchpad(scratch, plan->scratch_bytes)}});
  stream.wait();
}

void RunConvolution(Direction d, const Geometry& g, void* x, void* w, void* y) {
  auto plan = GetPlan(d, g, MakePlan);
  dnnl::stream stream(Engine());
  Aligned scratch(plan->scratch_bytes), weights(plan->reordered ? plan->weights.get_size() : 0);
  memory user_w(plan->user_weights, Engine(), w);
  memory prim_w = plan->reordered ? memory(plan->weights, Engine(), weights.data) : user_w;
  memory src(g.Src(), Engine(), x), dst(g.Dst(), Engine(), y);
  memory scratch_m = Scratchpad(scratch, plan->scratch_bytes);
  if (d != Direction::kBackwardWeights && plan->reordered)
    plan->reorder.execute(stream, {{DNNL_ARG_FROM, user_w}, {DNNL_ARG_TO, prim_w}});
  if (d == Direction::kForward) {
    plan->primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, prim_w},
                                     {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch_m}});
  } else if (d == Direction::kBackwardData) {
    plan->primitive.execute(stream, {{DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_WEIGHTS, prim_w},
                                     {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch_m}});
  } else {
    plan->primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, prim_w},
                                     {DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratch_m}});
    if (plan->reordered)
      plan->reorder.execute(stream, {{DNNL_ARG_FROM, prim_w}, {DNNL_ARG_TO, user_w}});
  }
  stream.wait();
}

ffi::Error Run(Direction d, const Geometry& g, void* x, void* w, void* y) {
  try {
    if (d != Direction::kForward && g.Pointwise()) {
      RunMatmul(d, g, x, w, y);
    } else {
      RunConvolution(d, g, x, w, y);
    }
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

using Buffer = ffi::AnyBuffer;
using Ints = ffi::Span<const int64_t>;

// x, w and y as in Run: the forward convolution's operands, whichever is the result.
ffi::Error Dispatch(Direction d, const Buffer& x, const Buffer& w, const Buffer& y,
                    int64_t groups, Ints strides, Ints pads) {
  if (strides.size() != 2 || pads.size() != 4)
    return ffi::Error::InvalidArgument("strides must have 2 entries and pads 4");
  const auto type = x.element_type();
  if (w.element_type() != type || y.element_type() != type ||
      (type != ffi::DataType::F32 && type != ffi::DataType::BF16))
    return ffi::Error::InvalidArgument("operands and result must all be float32 or bfloat16");
  const auto xs = x.dimensions(), ws = w.dimensions(), ys = y.dimensions();
  if (xs.size() != 4 || ws.size() != 4 || ys.size() != 4)
    return ffi::Error::InvalidArgument("operands and result must be 4-D");
  const Geometry g{xs[0], xs[1], xs[2], xs[3], ws[0], ws[1], ws[3], ys[1], ys[2],
                   groups, strides[0], strides[1], pads[0], pads[1], pads[2], pads[3],
                   type == ffi::DataType::F32 ? memory::data_type::f32
                                              : memory::data_type::bf16};
  return Run(d, g, x.untyped_data(), w.untyped_data(), y.untyped_data());
}

ffi::Error Forward(Buffer x, Buffer w, ffi::Result<Buffer> y, int64_t groups, Ints strides,
                   Ints pads) {
  return Dispatch(Direction::kForward, x, w, *y, groups, strides, pads);
}

ffi::Error BackwardData(Buffer dy, Buffer w, ffi::Result<Buffer> dx, int64_t groups,
                        Ints strides, Ints pads) {
  return Dispatch(Direction::kBackwardData, *dx, w, dy, groups, strides, pads);
}

ffi::Error BackwardWeights(Buffer x, Buffer dy, ffi::Result<Buffer> dw, int64_t groups,
                           Ints strides, Ints pads) {
  return Dispatch(Direction::kBackwardWeights, x, *dw, dy, groups, strides, pads);
}

auto Binding() {
  return ffi::Ffi::Bind().Arg<Buffer>().Arg<Buffer>().Ret<Buffer>().Attr<int64_t>("groups")
      .Attr<Ints>("strides").Attr<Ints>("pads");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(nfnets_conv_forward, Forward, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(nfnets_conv_backward_data, BackwardData, Binding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(nfnets_conv_backward_weights, BackwardWeights, Binding());

// ISA masks include the bits of the ISAs below them, so these two tests find
// AVX512-BF16 (and AMX above it) and AVX2-VNNI-2.
extern "C" int nfnets_onednn_native_bf16() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto has = [isa](dnnl::cpu_isa needed) {
    return (isa & static_cast<unsigned>(needed)) == static_cast<unsigned>(needed);
  };
  return has(dnnl::cpu_isa::avx512_core_bf16) || has(dnnl::cpu_isa::avx2_vnni_2);
}
