/* Reference G.722 decoder for tests: spandsp's g722_decode (64 kbit/s), stdin bytes -> stdout s16le. */
#include <stdio.h>
#include <stdint.h>
#include <spandsp.h>

int main(void) {
    g722_decode_state_t *s = g722_decode_init(NULL, 64000, 0);
    uint8_t in[4096];
    int16_t out[8192];
    size_t n;
    if (!s) return 1;
    while ((n = fread(in, 1, sizeof in, stdin)) > 0) {
        int m = g722_decode(s, out, in, (int) n);
        if (fwrite(out, 2, (size_t) m, stdout) != (size_t) m) return 1;
    }
    return 0;
}
