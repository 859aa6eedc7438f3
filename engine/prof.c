#include "prof.h"

const char *eng_prof_name(eng_op k)
{
    static const char *names[ENG_OP_N] = {
        "conv_fwd", "conv_bwd_data", "conv_bwd_weights", "gn_relu_fwd", "gn_relu_recompute",
        "gn_relu_bwd", "pool", "head", "ws", "sgd", "grad_sum", "reorder", "loader_wait",
        "other"};
    return k >= 0 && k < ENG_OP_N ? names[k] : "?";
}
