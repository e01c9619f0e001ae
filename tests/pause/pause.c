/*
 * Pause process for the containerd CRI tests: holds the pod sandbox's
 * namespaces open and does nothing else, like Kubernetes' own pause image.
 *
 * It runs as PID 1 of the sandbox, where the kernel drops signals that have
 * no handler, so SIGTERM and SIGINT need explicit handlers for
 * StopPodSandbox to end it with status 0 instead of a SIGKILL after the
 * grace period. It also reaps children, because orphans of the pod are
 * reparented to it.
 *
 * Built at test time with `gcc -static -Os` (see tests/src/containerd/image.rs):
 * the image has no libc, so the binary must be static.
 */
#include <signal.h>
#include <sys/wait.h>

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig) {
    (void)sig;
    stop_requested = 1;
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction sa = {0};
    sigset_t handled, wait_mask;

    /* Block the signals first so one that arrives before sigsuspend is kept
     * pending instead of lost between the flag check and the wait. */
    sigemptyset(&handled);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGCHLD);
    if (sigprocmask(SIG_BLOCK, &handled, &wait_mask) != 0)
        return 1;

    sa.sa_handler = on_stop;
    if (sigaction(SIGTERM, &sa, 0) != 0 || sigaction(SIGINT, &sa, 0) != 0)
        return 1;
    sa.sa_handler = on_child;
    sa.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &sa, 0) != 0)
        return 1;

    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);
    sigdelset(&wait_mask, SIGCHLD);
    while (!stop_requested)
        sigsuspend(&wait_mask);
    return 0;
}
