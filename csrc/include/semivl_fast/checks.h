// Argument checks that name the offending argument and say what to do.
#pragma once

#include <c10/util/Exception.h>

#define SVF_CHECK_ARG(cond, op, arg, ...) \
  TORCH_CHECK(cond, op, ": argument '", arg, "' ", __VA_ARGS__)

#define SVF_CHECK_CONTIGUOUS(op, t, arg)                                                                        \
  SVF_CHECK_ARG((t).is_contiguous(), op, arg, "must be contiguous (got strides ", (t).strides(),              \
                "); call .contiguous() or use the semivl_fast.ops function, which does it for you")

#define SVF_CHECK_DEVICE(op, t, dev, arg) \
  SVF_CHECK_ARG((t).device() == (dev), op, arg, "must be on ", (dev), " like the logits (got ", (t).device(), ")")
