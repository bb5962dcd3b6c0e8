/* libFuzzer target: the client side of the protocol, from the startup phase
 * on (SSLRequest, StartupMessage, CancelRequest, then regular messages).
 * See fuzz_common.h for the input layout and what is checked. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_framer(PGW_FRONTEND, data, size);
}
