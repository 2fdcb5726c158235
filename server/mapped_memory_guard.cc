#include "server/mapped_memory_guard.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

namespace vfio_user {
namespace mapped_memory_internal {

__thread GuardState t_guard = {0, 0, false};
std::atomic<bool> g_handler_installed{false};

}  // namespace mapped_memory_internal

namespace {

using mapped_memory_internal::GuardState;
using mapped_memory_internal::t_guard;

struct sigaction g_previous_action;
uintptr_t g_page_size = 4096;

// Passes a SIGBUS that is not ours on: the previous handler, or the default
// action (the faulting instruction runs again and kills the process).
void ChainToPrevious(int sig, siginfo_t* info, void* context) {
  const struct sigaction& prev = g_previous_action;
  if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction != nullptr) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN &&
      prev.sa_handler != nullptr) {
    prev.sa_handler(sig);
    return;
  }
  ::signal(SIGBUS, SIG_DFL);  // async-signal-safe; the fault repeats on return
}

void OnSigbus(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  GuardState& guard = t_guard;
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  if (guard.end != 0 && addr >= guard.begin && addr < guard.end &&
      info->si_code == BUS_ADRERR) {
    // A page of a client mapping vanished (file truncated): put a private
    // zero page in its place so the access can complete.
    void* page = reinterpret_cast<void*>(addr & ~(g_page_size - 1));
    if (::mmap(page, g_page_size, PROT_READ | PROT_WRITE,
               MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED) {
      guard.faulted = true;
      errno = saved_errno;
      return;
    }
  }
  errno = saved_errno;
  ChainToPrevious(sig, info, context);
}

}  // namespace

void InstallMappedMemoryFaultHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    const long page = ::sysconf(_SC_PAGESIZE);
    if (page > 0) g_page_size = static_cast<uintptr_t>(page);
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_sigaction = OnSigbus;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    ::sigaction(SIGBUS, &action, &g_previous_action);
    mapped_memory_internal::g_handler_installed.store(
        true, std::memory_order_release);
  });
}

}  // namespace vfio_user
