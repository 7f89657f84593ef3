/* init for the example platform: mounts the kernel file systems, runs
 * /etc/rc, then prints one marker line naming the build stamp and every
 * component key, so a boot test can tell exactly which build came up.
 * With pib.test=1 on the kernel command line it powers off afterwards,
 * which ends the virtual machine. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <pib/release.h>

#define MARKER "PIB-BOOT-OK"
#define FAIL_MARKER "PIB-BOOT-FAIL"

static void mount_fs(const char *type, const char *dir)
{
	mkdir(dir, 0755);
	if (mount(type, dir, type, 0, NULL) != 0 && errno != EBUSY)
		fprintf(stderr, "init: mount %s on %s: %s\n", type, dir, strerror(errno));
}

/* The kernel may start us without stdio when the archive has no
 * /dev/console; devtmpfs provides one. */
static void open_console(void)
{
	int fd = open("/dev/console", O_RDWR | O_NOCTTY);

	if (fd < 0)
		return;
	dup2(fd, 0);
	dup2(fd, 1);
	dup2(fd, 2);
	if (fd > 2)
		close(fd);
}

static int cmdline_has(const char *flag)
{
	char buf[4096];
	ssize_t n;
	int fd = open("/proc/cmdline", O_RDONLY);

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	for (char *tok = strtok(buf, " \n"); tok != NULL; tok = strtok(NULL, " \n"))
		if (strcmp(tok, flag) == 0)
			return 1;
	return 0;
}

/* Run argv and wait for it; returns its exit status, or -1. */
static int run(char *const argv[])
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (pid == 0) {
		execv(argv[0], argv);
		fprintf(stderr, "init: cannot run %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	/* As pid 1 we also reap orphans; wait for ours specifically. */
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void print_marker(int rc_status)
{
	struct release rel;

	if (release_read(RELEASE_PATH, &rel) != 0) {
		printf(FAIL_MARKER " reason=no-release-file path=" RELEASE_PATH "\n");
		return;
	}
	if (rc_status != 0) {
		printf(FAIL_MARKER " reason=rc-failed status=%d buildstamp=%s\n", rc_status, rel.buildstamp);
		return;
	}
	printf(MARKER " buildstamp=%s", rel.buildstamp);
	for (int i = 0; i < rel.nkeys; i++)
		printf(" %s=%s", rel.keys[i].name, rel.keys[i].value);
	printf("\n");
}

int main(void)
{
	char *rc[] = {"/bin/sh", "/etc/rc", NULL};
	char *shell[] = {"/bin/sh", NULL};
	int status = 0;

	mount_fs("devtmpfs", "/dev");
	open_console();
	mount_fs("proc", "/proc");
	mount_fs("sysfs", "/sys");
	mount_fs("tmpfs", "/tmp");
	setenv("PATH", "/usr/bin:/bin:/usr/sbin:/sbin", 1);
	setenv("HOME", "/root", 1);

	if (access("/etc/rc", R_OK) == 0)
		status = run(rc);
	print_marker(status);
	fflush(stdout);

	if (cmdline_has("pib.test=1")) {
		sync();
		reboot(RB_POWER_OFF);
	}
	/* Interactive use: keep a shell on the console; pid 1 must not exit. */
	for (;;) {
		if (run(shell) < 0 || access(shell[0], X_OK) != 0)
			pause();
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
	}
}
