/*
 * LD_PRELOAD shim for linux.uml (User-Mode Linux 6.1) on hosts whose XSAVE area
 * is larger than UML's (AMX: 11008 bytes vs UML's 2696). UML restores a child's
 * FPU state with PTRACE_SETREGSET(NT_X86_XSTATE) and a short iovec, which such a
 * host kernel rejects with EFAULT ("ptrace set fp regs failed"), and the guest
 * panics at its first process. Here a short SETREGSET becomes: read the child's
 * whole area, lay UML's bytes over its start, write the whole area back.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>

/* From <sys/ptrace.h>, which declares ptrace() with an enum we cannot match. */
#define PTRACE_GETREGSET 0x4204
#define PTRACE_SETREGSET 0x4205
#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

typedef long (*ptrace_fn)(int, pid_t, void *, void *);
static _Alignas(64) unsigned char full[65536];

long ptrace(int request, ...) {
  static ptrace_fn real;
  va_list ap;
  va_start(ap, request);
  pid_t pid = va_arg(ap, pid_t);
  void *addr = va_arg(ap, void *);
  void *data = va_arg(ap, void *);
  va_end(ap);
  if (real == NULL) real = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
  if (request == PTRACE_SETREGSET && (long)addr == NT_X86_XSTATE && data != NULL) {
    struct iovec *iov = data;
    struct iovec whole = {full, sizeof full};
    if (iov->iov_len < sizeof full && real(PTRACE_GETREGSET, pid, addr, &whole) == 0 &&
        whole.iov_len > iov->iov_len) {
      memcpy(full, iov->iov_base, iov->iov_len);
      return real(PTRACE_SETREGSET, pid, addr, &whole);
    }
  }
  return real(request, pid, addr, data);
}
