/* The pod sandbox's pause process: sleeps until SIGTERM or SIGINT, reaps nothing (the kubelet shares no PID
 * namespace here). Built static into an image FROM scratch, so that no registry is needed for it. */
#include <signal.h>
#include <unistd.h>

static void leave(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGTERM, leave);
    signal(SIGINT, leave);
    for (;;) pause();
}
