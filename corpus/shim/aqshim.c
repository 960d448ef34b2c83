/* aqshim: LD_PRELOAD shim that makes qemu-system-x86_64 map guest RAM the
 * way Firecracker does, so a real guest restores through Aquifer's serving
 * paths (docs/corpus.md, "Restoring real guests").
 *
 * QEMU, started with -object memory-backend-memfd,id=mem,share=on (or a
 * memory-backend-file, align=2M, for huge pages) maps guest RAM as one
 * mmap(addr, AQ_SHIM_SIZE, RW, MAP_SHARED|MAP_FIXED, fd, 0). The shim
 * replaces that mapping, at the same address, according to AQ_SHIM_MODE:
 *   uffd     anonymous MAP_PRIVATE|MAP_NORESERVE, registered MISSING on a
 *            userfaultfd (O_CLOEXEC|O_NONBLOCK, UFFD_FEATURE_EVENT_REMOVE);
 *            Firecracker 1.12's handshake (JSON regions + SCM_RIGHTS in one
 *            sendmsg) goes to the socket AQ_SHIM_SOCKET, held open until exit
 *   huge     the same with MAP_HUGETLB|MAP_HUGE_2MB and a 2 MiB page_size
 *   file     MAP_PRIVATE of the memory image AQ_SHIM_FILE: Firecracker's File
 *            backend
 *   faasnap  anonymous, then MAP_PRIVATE|MAP_FIXED file mappings from the plan
 *            AQ_SHIM_PLAN, one "GUEST_OFF LEN FILE_OFF PATH" line each
 * QEMU still takes the block for shared (x-ignore-shared skips it in the
 * migration stream). Balloon: QEMU discards RAM of a shared block by punching
 * holes in its fd, which no longer backs the mapping; the shim turns that
 * into madvise(MADV_DONTNEED) on the mapping, so a userfaultfd handler sees
 * UFFD_EVENT_REMOVE as with Firecracker's balloon, once per discard.
 * Real calls go through syscall(2): no dlsym, no recursion into the hooks. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default"))) /* built with -fvisibility=hidden */
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif

static int ram_fd = -1;
static char *ram;
static __thread char *punched; /* last range discarded by fallocate */
static __thread size_t punched_len;

static void *raw_mmap(void *a, size_t n, int prot, int flags, int fd, off_t off) {
	return (void *)syscall(SYS_mmap, a, n, prot, flags, fd, off);
}

static void *fail(const char *what) {
	fprintf(stderr, "aqshim: %s: %s\n", what, strerror(errno));
	return MAP_FAILED;
}

/* uffd/huge: register the anonymous mapping and hand it to the handler. */
static void *handshake(char *p, size_t n, size_t ps) {
	const char *sock = getenv("AQ_SHIM_SOCKET");
	int u = -1, dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev >= 0) {
		u = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
		close(dev);
	}
	if (u < 0 && (u = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)) < 0)
		return fail("userfaultfd");
	struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE};
	if (ioctl(u, UFFDIO_API, &api) < 0) return fail("UFFDIO_API");
	struct uffdio_register reg = {.range = {(uintptr_t)p, n}, .mode = UFFDIO_REGISTER_MODE_MISSING};
	if (ioctl(u, UFFDIO_REGISTER, &reg) < 0) return fail("UFFDIO_REGISTER");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (!sock || strlen(sock) >= sizeof sa.sun_path) { errno = EINVAL; return fail("AQ_SHIM_SOCKET"); }
	strcpy(sa.sun_path, sock);
	if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) return fail(sock);
	char js[256];
	int jn = snprintf(js, sizeof js, "[{\"base_host_virt_addr\":%lu,\"size\":%zu,\"offset\":0,"
		"\"page_size\":%zu,\"page_size_kib\":%zu}]", (unsigned long)(uintptr_t)p, n, ps, ps);
	union { char b[CMSG_SPACE(sizeof(int))]; struct cmsghdr a; } ctl = {0};
	struct iovec iov = {js, (size_t)jn};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET, c->cmsg_type = SCM_RIGHTS, c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &u, sizeof u);
	if (sendmsg(s, &m, MSG_NOSIGNAL) != jn) return fail("sendmsg");
	return p; /* s stays open until QEMU exits (Firecracker 1.12+) */
}

/* file/faasnap: private file mappings over the anonymous base. */
static void *map_file(char *p, size_t n, int prot, const char *path, unsigned long goff,
		      unsigned long len, unsigned long foff) {
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) return fail(path);
	if (goff + len > n || goff + len < goff) { errno = ERANGE; return fail(path); }
	void *r = raw_mmap(p + goff, len, prot, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, foff);
	close(fd);
	return r == MAP_FAILED ? fail(path) : p;
}

static void *replace(void *addr, size_t n, int prot, int fd) {
	const char *mode = getenv("AQ_SHIM_MODE") ? getenv("AQ_SHIM_MODE") : "";
	int huge = strcmp(mode, "huge") == 0;
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED | (huge ? MAP_HUGETLB | MAP_HUGE_2MB : 0);
	char *p = raw_mmap(addr, n, prot, flags, -1, 0);
	if (p == MAP_FAILED) return fail("anonymous guest memory");
	ram_fd = fd, ram = p;
	if (huge || strcmp(mode, "uffd") == 0) return handshake(p, n, huge ? 2 << 20 : 4096);
	if (strcmp(mode, "file") == 0) return map_file(p, n, prot, getenv("AQ_SHIM_FILE"), 0, n, 0);
	FILE *plan = getenv("AQ_SHIM_PLAN") ? fopen(getenv("AQ_SHIM_PLAN"), "re") : NULL;
	if (strcmp(mode, "faasnap") != 0 || !plan) { errno = EINVAL; return fail("AQ_SHIM_MODE/AQ_SHIM_PLAN"); }
	unsigned long g, l, o;
	char path[4096];
	void *r = p;
	while (r != MAP_FAILED && fscanf(plan, "%lu %lu %lu %4095s", &g, &l, &o, path) == 4)
		r = map_file(p, n, prot, path, g, l, o);
	fclose(plan);
	return r;
}

EXPORT void *mmap(void *addr, size_t n, int prot, int flags, int fd, off_t off) {
	const char *size = getenv("AQ_SHIM_SIZE");
	if (ram == NULL && size && fd >= 0 && off == 0 && (flags & MAP_SHARED) && (flags & MAP_FIXED) &&
	    n == strtoull(size, NULL, 0))
		return replace(addr, n, prot, fd);
	return raw_mmap(addr, n, prot, flags, fd, off);
}
EXPORT void *mmap64(void *addr, size_t n, int prot, int flags, int fd, off_t off) { return mmap(addr, n, prot, flags, fd, off); }

EXPORT int fallocate(int fd, int mode, off_t off, off_t len) {
	if (fd == ram_fd && ram && (mode & FALLOC_FL_PUNCH_HOLE)) {
		if (syscall(SYS_madvise, ram + off, len, MADV_DONTNEED) < 0) return -1;
		punched = ram + off, punched_len = len;
	}
	return syscall(SYS_fallocate, fd, mode, off, len) < 0 ? -1 : 0;
}
/* QEMU 7.2 follows the punch with its own MADV_DONTNEED when the block's
 * page size is the host's: that range is discarded already, and a second
 * zap would send the handler a second REMOVE for it. */
EXPORT int madvise(void *a, size_t n, int advice) {
	if (advice == MADV_DONTNEED && a == punched && n == punched_len) {
		punched = NULL;
		return 0;
	}
	return syscall(SYS_madvise, a, n, advice) < 0 ? -1 : 0;
}
EXPORT int fallocate64(int fd, int mode, off_t off, off_t len) { return fallocate(fd, mode, off, len); }
