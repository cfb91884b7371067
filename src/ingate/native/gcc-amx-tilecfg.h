/* Force-included (-include) into every C and C++ file of the llama.cpp build that `make` does.
 *
 * GCC 12's <amxtileintrin.h> writes _tile_loadconfig as
 *     __asm__ volatile ("ldtilecfg\t%X0" :: "m" (*((const void **)__config)));
 * which tells the optimizer that LDTILECFG reads 8 bytes, when it reads 64. At -O2 and above
 * the stores of a tile configuration's `rows` and `colsb` (bytes 16-63) are then dead to the
 * compiler and dropped: llama.cpp's AMX kernels (ggml-cpu/amx/mmq.cpp, ggml_tile_config_init)
 * load a configuration whose tiles are all 0x0, and the first tile instruction of any batch of
 * 2 or more tokens faults (SIGILL, tilezero; SIGSEGV in other builds). Single-token decode takes
 * an AVX512-VNNI path with no tiles, which is why it works.
 *
 * The fix: the same instruction with a memory operand of the full 64 bytes, so the stores stay.
 * It applies only where GCC compiles AMX code for x86-64; elsewhere this header is empty.
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__AMX_TILE__)
#include <immintrin.h>
#undef _tile_loadconfig
#define _tile_loadconfig(config) \
    __asm__ volatile ("ldtilecfg\t%0" :: "m" (*(const unsigned char (*)[64])(config)))
#endif
