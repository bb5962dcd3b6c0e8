/* libFuzzer target: the server side of the protocol, regular messages from
 * the first byte. See fuzz_common.h for the input layout and what is
 * checked. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_framer(PGW_BACKEND, data, size);
}
