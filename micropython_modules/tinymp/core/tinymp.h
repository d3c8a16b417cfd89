/* tinymp core: the one header a binding includes. */
#ifndef TINYMP_H
#define TINYMP_H

#define TINYMP_VERSION "0.1.0"

#include "tmp_common.h"
#include "tmp_kernels.h"
#include "tmp_model.h"
#include "tmp_plan.h"
#include "tmp_infer.h"
#include "tmp_train.h"
#include "tmp_options.h"

#endif /* TINYMP_H */
