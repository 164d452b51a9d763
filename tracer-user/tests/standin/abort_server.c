/* A server that aborts each connection after reading its request, for
 * tests/user_stacks.rs: built twice, with and without frame pointers, so
 * that the test knows the exact stack rsttrace --user-stacks must report
 * (main -> serve -> handle_request -> abort_connection), and where the
 * kernel's frame-pointer walk must stop short.
 *
 * The close is a raw system call made in abort_connection itself: libc's
 * close() is built without frame pointers on most distributions, and the
 * walk would start inside it. Usage: abort_server N; prints
 * "standin-port P", aborts N connections, exits when stdin closes. */
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdlib.h>

__attribute__((noinline)) static long abort_connection(int fd)
{
	struct linger l = { .l_onoff = 1, .l_linger = 0 };
	long ret;

	if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) != 0)
		return -1;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "0"((long)SYS_close), "D"((long)fd)
			 : "rcx", "r11", "memory");
	return ret;
}

/* Reads the whole request, so that the abort finds nothing unread. */
__attribute__((noinline)) static int handle_request(int fd)
{
	char req[1024];
	size_t len = 0;

	while (len < 4 || memcmp(req + len - 4, "\r\n\r\n", 4) != 0) {
		ssize_t n = read(fd, req + len, sizeof(req) - len);
		if (n <= 0)
			return -1;
		len += (size_t)n;
	}
	return abort_connection(fd) == 0 ? 0 : -1;
}

__attribute__((noinline)) static int serve(int listener, int n)
{
	for (int i = 0; i < n; i++) {
		int fd = accept(listener, NULL, NULL);
		if (fd < 0 || handle_request(fd) != 0)
			return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t alen = sizeof(a);
	int listener = socket(AF_INET, SOCK_STREAM, 0);
	char buf[64];

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (argc != 2 || listener < 0 || bind(listener, (struct sockaddr *)&a, sizeof(a)) != 0 ||
	    listen(listener, 16) != 0 || getsockname(listener, (struct sockaddr *)&a, &alen) != 0)
		return 2;
	printf("standin-port %d\n", ntohs(a.sin_port));
	fflush(stdout);
	if (serve(listener, atoi(argv[1])) != 0)
		return 1;
	/* Alive until the test has read the trace: the stack is symbolized
	 * from this process's mappings when its event is read. */
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return 0;
}
