/* A stand-in for an in-process web-application firewall (ModSecurity's
 * connectors block a request by aborting its connection): built as
 * libmodsecurity.so.3 for tests/agents_in_process.rs, which loads it in a
 * server and checks that rsttrace names the module behind the aborts. */
#include <sys/socket.h>
#include <unistd.h>

/* Aborts connection `fd`: SO_LINGER {on, 0}, then close (a RST, no FIN). */
int msc_standin_abort(int fd)
{
	struct linger l = { .l_onoff = 1, .l_linger = 0 };

	if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) != 0)
		return -1;
	return close(fd);
}
