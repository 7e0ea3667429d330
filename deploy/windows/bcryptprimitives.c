/* A stand-in bcryptprimitives.dll for running postern.exe under Wine 8,
 * which lacks ProcessPrng (Rust's std imports it for random numbers).
 * Test use only: built by deploy/windows/stand-in.sh beside the .exe. */
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID, ULONG);
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!SystemFunction036(data, n)) return FALSE;
        data += n; len -= n;
    }
    return TRUE;
}
