// labtool: the guest side of the QEMU lab (tools/qemu-lab/). Runs as part
// of the initramfs's /init inside a Linux guest booted by QEMU with our
// vfio-user devices attached, and prints what it observes on the serial
// console as "LAB: key=value ..." lines that tools/qemu-lab/run-idio16.sh
// checks. Built static (gcc -static) so the initramfs needs no libc.
//
//   labtool pci      lspci-like listing: ids, driver, IRQ, BARs, capabilities
//                    (MSI-X details included), from sysfs.
//   labtool idio16   drives the ACCES PCI-IDIO-16 through the in-tree driver
//                    (gpio-pci-idio-16) and the GPIO character device:
//                    reads the inputs, waits for interrupt-driven edge
//                    events on one input line while the host toggles it,
//                    drives the outputs.
//   labtool dma      drives the DMA test device (docs/DMA_TEST_DEVICE.md)
//                    from user space (no driver exists): BARs mmap'ed from
//                    sysfs, buffers' guest-physical addresses from
//                    /proc/self/pagemap, results checked in guest memory.
//
// Parameters come from the kernel command line (lab.NAME=VALUE):
//   lab.line=N        IDIO-16 input line the host toggles (default 0)
//   lab.edges=N       edges to wait for (default 2)
//   lab.out1=0xNNNN   first output pattern (default 0xa5c3)
//   lab.out2=0xNNNN   second output pattern (default 0x5a3c)
//   lab.timeout=S     seconds to wait for each edge (default 60)
//   lab.alledges=1    request edge events on all 16 input lines, not only
//                     lab.line (needed with Linux >= 6.3's regmap-irq based
//                     driver, which oopses on an interrupt while some input
//                     lines have no IRQ mapping: docs/QEMU-INTEROP.md)
//
// Handshake with the host: before each edge the guest prints
// "LAB: WAIT-EDGE k"; the host then sends SIGUSR1 to the device server,
// which toggles the input line and raises INTx.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/gpio.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SYSFS_PCI "/sys/bus/pci/devices"

static int failures;

static void say(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("LAB: ");
  vprintf(fmt, ap);
  printf("\n");
  fflush(stdout);
  va_end(ap);
}

static void check(int ok, const char* what) {
  say("CHECK %s %s", ok ? "ok" : "FAILED", what);
  if (!ok) failures++;
}

// ---- small sysfs helpers ----

static int read_text(const char* path, char* buf, size_t size) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n < 0) return -1;
  buf[n] = '\0';
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
  return 0;
}

static unsigned long read_hex(const char* dir, const char* name) {
  char path[512], buf[64];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  if (read_text(path, buf, sizeof(buf)) != 0) return ~0ul;
  return strtoul(buf, NULL, 0);
}

// Reads up to `size` bytes of config space; returns the bytes read.
static size_t read_config(const char* dir, uint8_t* cfg, size_t size) {
  char path[512];
  snprintf(path, sizeof(path), "%s/config", dir);
  memset(cfg, 0, size);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = pread(fd, cfg, size, 0);
  close(fd);
  return n < 0 ? 0 : (size_t)n;
}

static int write_config16(const char* dir, unsigned offset, uint16_t value) {
  char path[512];
  snprintf(path, sizeof(path), "%s/config", dir);
  int fd = open(path, O_WRONLY);
  if (fd < 0) return -1;
  uint8_t bytes[2] = {(uint8_t)value, (uint8_t)(value >> 8)};
  ssize_t n = pwrite(fd, bytes, 2, offset);
  close(fd);
  return n == 2 ? 0 : -1;
}

static uint16_t le16(const uint8_t* p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t* p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void driver_name(const char* dir, char* out, size_t size) {
  char path[512], link[512];
  snprintf(path, sizeof(path), "%s/driver", dir);
  ssize_t n = readlink(path, link, sizeof(link) - 1);
  if (n < 0) {
    snprintf(out, size, "none");
    return;
  }
  link[n] = '\0';
  const char* slash = strrchr(link, '/');
  snprintf(out, size, "%s", slash ? slash + 1 : link);
}

// Finds the sysfs directory of the first device with these ids.
static int find_device(unsigned vendor, unsigned device, char* dir, size_t size) {
  DIR* d = opendir(SYSFS_PCI);
  if (!d) return -1;
  struct dirent* e;
  int found = -1;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char path[512];
    snprintf(path, sizeof(path), SYSFS_PCI "/%s", e->d_name);
    if (read_hex(path, "vendor") == vendor && read_hex(path, "device") == device) {
      snprintf(dir, size, "%s", path);
      found = 0;
      break;
    }
  }
  closedir(d);
  return found;
}

// ---- labtool pci ----

static const char* cap_name(unsigned id) {
  switch (id) {
    case 0x01: return "PM";
    case 0x05: return "MSI";
    case 0x10: return "PCIe";
    case 0x11: return "MSI-X";
    default: return "other";
  }
}

static void describe_device(const char* dir, const char* bdf) {
  char drv[128];
  driver_name(dir, drv, sizeof(drv));
  say("PCI %s id=%04lx:%04lx class=%06lx driver=%s irq=%lu", bdf, read_hex(dir, "vendor"),
      read_hex(dir, "device"), read_hex(dir, "class"), drv, read_hex(dir, "irq"));

  char path[512];
  snprintf(path, sizeof(path), "%s/resource", dir);
  FILE* f = fopen(path, "r");
  if (f) {
    unsigned long long start, end, flags;
    for (int i = 0; i < 7 && fscanf(f, "%llx %llx %llx", &start, &end, &flags) == 3; i++) {
      if (start == 0 && end == 0) continue;
      say("PCI %s bar%d start=0x%llx size=0x%llx type=%s", bdf, i, start, end - start + 1,
          (flags & 0x100) ? "io" : (flags & 0x200) ? "mem" : "other");
    }
    fclose(f);
  }

  uint8_t cfg[4096];
  size_t n = read_config(dir, cfg, sizeof(cfg));
  if (n < 64) return;
  say("PCI %s cmd=0x%04x status=0x%04x intpin=%u subsys=%04x:%04x cfgsize=%zu", bdf,
      le16(cfg + 4), le16(cfg + 6), cfg[0x3d], le16(cfg + 0x2c), le16(cfg + 0x2e), n);
  if (!(le16(cfg + 6) & 0x10)) return;  // no capability list
  unsigned pos = cfg[0x34] & 0xfc;
  for (int guard = 0; pos >= 0x40 && pos + 8 <= n && pos < 256 && guard < 48; guard++) {
    unsigned id = cfg[pos];
    if (id == 0x11) {
      uint16_t ctrl = le16(cfg + pos + 2);
      uint32_t table = le32(cfg + pos + 4), pba = le32(cfg + pos + 8);
      say("PCI %s cap@0x%02x %s vectors=%u enabled=%u table=bar%u+0x%x pba=bar%u+0x%x", bdf, pos,
          cap_name(id), (ctrl & 0x7ff) + 1, ctrl >> 15, table & 7, table & ~7u, pba & 7,
          pba & ~7u);
    } else if (id == 0x05) {
      uint16_t ctrl = le16(cfg + pos + 2);
      say("PCI %s cap@0x%02x %s vectors=%u 64bit=%u maskable=%u", bdf, pos, cap_name(id),
          1u << ((ctrl >> 1) & 7), (ctrl >> 7) & 1, (ctrl >> 8) & 1);
    } else {
      say("PCI %s cap@0x%02x %s id=0x%02x", bdf, pos, cap_name(id), id);
    }
    pos = cfg[pos + 1] & 0xfc;
  }
}

static int cmd_pci(void) {
  DIR* d = opendir(SYSFS_PCI);
  if (!d) {
    say("PCI no %s", SYSFS_PCI);
    return 1;
  }
  struct dirent* e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char dir[512];
    snprintf(dir, sizeof(dir), SYSFS_PCI "/%s", e->d_name);
    describe_device(dir, e->d_name);
  }
  closedir(d);
  return 0;
}

// ---- kernel command line parameters ----

static unsigned long param(const char* name, unsigned long fallback) {
  char cmdline[4096];
  if (read_text("/proc/cmdline", cmdline, sizeof(cmdline)) != 0) return fallback;
  char key[64];
  snprintf(key, sizeof(key), "lab.%s=", name);
  for (char* tok = strtok(cmdline, " "); tok; tok = strtok(NULL, " ")) {
    if (strncmp(tok, key, strlen(key)) == 0) return strtoul(tok + strlen(key), NULL, 0);
  }
  return fallback;
}

// ---- labtool idio16 ----

// Lines of the driver's gpio_chip: 0-15 outputs, 16-31 inputs.
enum { kOutputBase = 0, kInputBase = 16, kLinesPerBank = 16 };

// Requests `count` consecutive lines from `first`; `edge_mask` selects (by
// request index) the lines that get both-edge detection. Outputs start at
// `values`. Returns the line-request fd or -1.
static int request_lines(int chip, unsigned first, unsigned count, int output, uint64_t values,
                         uint64_t edge_mask) {
  struct gpio_v2_line_request req;
  memset(&req, 0, sizeof(req));
  for (unsigned i = 0; i < count; i++) req.offsets[i] = first + i;
  snprintf(req.consumer, sizeof(req.consumer), "labtool");
  req.num_lines = count;
  req.config.flags = output ? GPIO_V2_LINE_FLAG_OUTPUT : GPIO_V2_LINE_FLAG_INPUT;
  unsigned attrs = 0;
  if (output) {
    req.config.attrs[attrs].attr.id = GPIO_V2_LINE_ATTR_ID_OUTPUT_VALUES;
    req.config.attrs[attrs].attr.values = values;
    req.config.attrs[attrs].mask = (count == 64) ? ~0ull : (1ull << count) - 1;
    attrs++;
  }
  if (edge_mask != 0) {
    req.config.attrs[attrs].attr.id = GPIO_V2_LINE_ATTR_ID_FLAGS;
    req.config.attrs[attrs].attr.flags =
        GPIO_V2_LINE_FLAG_INPUT | GPIO_V2_LINE_FLAG_EDGE_RISING | GPIO_V2_LINE_FLAG_EDGE_FALLING;
    req.config.attrs[attrs].mask = edge_mask;
    attrs++;
  }
  req.config.num_attrs = attrs;
  if (ioctl(chip, GPIO_V2_GET_LINE_IOCTL, &req) < 0) {
    say("ERROR GPIO_V2_GET_LINE_IOCTL lines %u..%u: %s", first, first + count - 1,
        strerror(errno));
    return -1;
  }
  return req.fd;
}

static int get_values(int lines, unsigned count, uint64_t* out) {
  struct gpio_v2_line_values v = {.bits = 0, .mask = (1ull << count) - 1};
  if (ioctl(lines, GPIO_V2_LINE_GET_VALUES_IOCTL, &v) < 0) {
    say("ERROR GPIO_V2_LINE_GET_VALUES_IOCTL: %s", strerror(errno));
    return -1;
  }
  *out = v.bits;
  return 0;
}

static int set_values(int lines, unsigned count, uint64_t bits) {
  struct gpio_v2_line_values v = {.bits = bits, .mask = (1ull << count) - 1};
  if (ioctl(lines, GPIO_V2_LINE_SET_VALUES_IOCTL, &v) < 0) {
    say("ERROR GPIO_V2_LINE_SET_VALUES_IOCTL: %s", strerror(errno));
    return -1;
  }
  return 0;
}

// Opens /dev/gpiochipN of the PCI device at `dir` (its gpiochipN child).
static int open_gpiochip(const char* dir) {
  DIR* d = opendir(dir);
  if (!d) return -1;
  struct dirent* e;
  int fd = -1;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, "gpiochip", 8) == 0) {
      char dev[300];
      snprintf(dev, sizeof(dev), "/dev/%s", e->d_name);
      fd = open(dev, O_RDWR | O_CLOEXEC);
      if (fd >= 0) {
        struct gpiochip_info info;
        if (ioctl(fd, GPIO_GET_CHIPINFO_IOCTL, &info) == 0) {
          say("GPIOCHIP %s name=%s label=%s lines=%u", dev, info.name, info.label, info.lines);
        }
      }
      break;
    }
  }
  closedir(d);
  return fd;
}

static const char* edge_name(uint32_t id) {
  return id == GPIO_V2_LINE_EVENT_RISING_EDGE    ? "rising"
         : id == GPIO_V2_LINE_EVENT_FALLING_EDGE ? "falling"
                                                 : "unknown";
}

// Reads events from `lines`, waiting up to `timeout_ms` for the first event
// on chip line `offset` and then draining what follows within 300 ms.
// Returns how many events concerned `offset`; the last goes to *last.
// Events on other lines are counted in *others.
static int read_events(int lines, unsigned offset, int timeout_ms,
                       struct gpio_v2_line_event* last, int* others) {
  int count = 0;
  *others = 0;
  for (;;) {
    struct pollfd p = {.fd = lines, .events = POLLIN};
    int r = poll(&p, 1, count == 0 ? timeout_ms : 300);
    if (r <= 0) break;
    struct gpio_v2_line_event ev;
    if (read(lines, &ev, sizeof(ev)) != (ssize_t)sizeof(ev)) break;
    if (ev.offset != offset) {
      (*others)++;
      continue;
    }
    *last = ev;
    count++;
    say("EVENT line=%u edge=%s seqno=%u", ev.offset, edge_name(ev.id), ev.seqno);
  }
  return count;
}

static int cmd_idio16(void) {
  const unsigned line = (unsigned)param("line", 0) & 15;
  const unsigned edges = (unsigned)param("edges", 2);
  const uint64_t out1 = param("out1", 0xa5c3) & 0xffff;
  const uint64_t out2 = param("out2", 0x5a3c) & 0xffff;
  const int timeout_ms = (int)param("timeout", 60) * 1000;
  const int all_edges = param("alledges", 0) != 0;

  char dir[512];
  if (find_device(0x494f, 0x0dc8, dir, sizeof(dir)) != 0) {
    check(0, "idio16-present");
    return 1;
  }
  const char* bdf = strrchr(dir, '/') + 1;
  char drv[128];
  driver_name(dir, drv, sizeof(drv));
  say("IDIO16 bdf=%s driver=%s irq=%lu", bdf, drv, read_hex(dir, "irq"));
  check(strcmp(drv, "pci-idio-16") == 0, "idio16-driver-bound");

  int chip = open_gpiochip(dir);
  if (chip < 0) {
    check(0, "idio16-gpiochip");
    return 1;
  }

  // Inputs, with edge detection on the toggled line (or all of them): this
  // unmasks their IRQs, and the driver enables the card's interrupt.
  const uint64_t edge_mask = all_edges ? (1ull << kLinesPerBank) - 1 : 1ull << line;
  int inputs = request_lines(chip, kInputBase, kLinesPerBank, 0, 0, edge_mask);
  if (inputs < 0) return 1;
  uint64_t in = 0;
  if (get_values(inputs, kLinesPerBank, &in) == 0) say("INPUTS initial=0x%04" PRIx64, in);

  for (unsigned k = 1; k <= edges; k++) {
    say("WAIT-EDGE %u", k);
    struct gpio_v2_line_event ev;
    memset(&ev, 0, sizeof(ev));
    int others = 0;
    int n = read_events(inputs, kInputBase + line, timeout_ms, &ev, &others);
    uint64_t now = 0;
    get_values(inputs, kLinesPerBank, &now);
    say("EDGE %u events=%d line=%u edge=%s inputs=0x%04" PRIx64, k, n,
        n ? ev.offset - kInputBase : line, n ? edge_name(ev.id) : "none", now);
    if (others) say("EDGE %u events-on-other-lines=%d", k, others);
  }
  close(inputs);

  // Outputs: request them driven to out1 (direction_output per line), read
  // them back, then set out2 in one call (set_multiple).
  // (Linux >= 6.3's regmap-based driver declares the output registers
  // write-only, so reading them back fails there: "readback=unreadable".)
  int outputs = request_lines(chip, kOutputBase, kLinesPerBank, 1, out1, 0);
  if (outputs < 0) return 1;
  const uint64_t patterns[2] = {out1, out2};
  for (int i = 0; i < 2; i++) {
    if (i > 0) set_values(outputs, kLinesPerBank, patterns[i]);
    uint64_t readback = 0;
    if (get_values(outputs, kLinesPerBank, &readback) == 0) {
      say("OUTPUTS set=0x%04" PRIx64 " readback=0x%04" PRIx64, patterns[i], readback);
    } else {
      say("OUTPUTS set=0x%04" PRIx64 " readback=unreadable", patterns[i]);
    }
  }
  close(outputs);
  close(chip);
  return failures ? 1 : 0;
}

// ---- labtool dma ----

// Register map of the DMA test device (docs/DMA_TEST_DEVICE.md).
enum {
  kRegId = 0x000, kRegControl = 0x008, kRegStatus = 0x00c, kRegSrcLo = 0x010,
  kRegSrcHi = 0x014, kRegDstLo = 0x018, kRegDstHi = 0x01c, kRegLength = 0x020,
  kRegOpcode = 0x024, kRegFillPattern = 0x028, kRegVector = 0x02c, kRegTag = 0x030,
  kRegCompletedTag = 0x034, kRegResultLo = 0x038, kRegIntStatus = 0x040,
  kRegErrorCode = 0x044, kRegErrorErrno = 0x048, kRegCompletedCount = 0x04c,
  kDoorbell = 0x000, kRingDoorbell = 0x004, kRingOffset = 0x1000,
  kStatusBlockOffset = 0x2000,
  kOpCopy = 1, kOpFill = 2, kOpChecksum = 3,
  kStatusBusy = 1, kStatusDone = 2, kStatusError = 4,
};

static volatile uint32_t* reg32(volatile uint8_t* base, unsigned off) {
  return (volatile uint32_t*)(base + off);
}

static volatile uint8_t* map_bar(const char* dir, int bar, size_t size) {
  char path[512];
  snprintf(path, sizeof(path), "%s/resource%d", dir, bar);
  int fd = open(path, O_RDWR | O_SYNC);
  if (fd < 0) {
    say("ERROR open %s: %s", path, strerror(errno));
    return NULL;
  }
  void* p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    say("ERROR mmap %s: %s", path, strerror(errno));
    return NULL;
  }
  return (volatile uint8_t*)p;
}

// Guest-physical address of the page holding `p` (locked), from pagemap.
static uint64_t phys_addr(void* p) {
  int fd = open("/proc/self/pagemap", O_RDONLY);
  if (fd < 0) return 0;
  const long page = sysconf(_SC_PAGESIZE);
  uint64_t entry = 0;
  ssize_t n = pread(fd, &entry, sizeof(entry), (off_t)((uintptr_t)p / page * sizeof(entry)));
  close(fd);
  if (n != (ssize_t)sizeof(entry) || !(entry & (1ull << 63))) return 0;
  return (entry & ((1ull << 55) - 1)) * (uint64_t)page + (uintptr_t)p % page;
}

static uint32_t crc32c(const uint8_t* data, size_t len) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < len; i++) {
    crc ^= data[i];
    for (int b = 0; b < 8; b++) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
  }
  return crc ^ 0xffffffffu;
}

// Programs one operation through the BAR0 registers, rings the doorbell and
// polls STATUS until it is no longer busy. Returns STATUS.
static uint32_t run_op(volatile uint8_t* bar0, volatile uint8_t* bar2, uint32_t opcode,
                       uint64_t src, uint64_t dst, uint32_t length, uint32_t pattern,
                       uint32_t tag) {
  *reg32(bar0, kRegSrcLo) = (uint32_t)src;
  *reg32(bar0, kRegSrcHi) = (uint32_t)(src >> 32);
  *reg32(bar0, kRegDstLo) = (uint32_t)dst;
  *reg32(bar0, kRegDstHi) = (uint32_t)(dst >> 32);
  *reg32(bar0, kRegLength) = length;
  *reg32(bar0, kRegOpcode) = opcode;
  *reg32(bar0, kRegFillPattern) = pattern;
  *reg32(bar0, kRegVector) = 0;
  *reg32(bar0, kRegTag) = tag;
  *reg32(bar2, kDoorbell) = 1;
  uint32_t status = kStatusBusy;
  for (int i = 0; i < 100000 && ((status = *reg32(bar0, kRegStatus)) & kStatusBusy); i++) {
    usleep(100);
  }
  say("DMA op=%u tag=0x%x status=0x%x completed_tag=0x%x result=0x%x error=%u errno=%u",
      opcode, tag, status, *reg32(bar0, kRegCompletedTag), *reg32(bar0, kRegResultLo),
      *reg32(bar0, kRegErrorCode), *reg32(bar0, kRegErrorErrno));
  return status;
}

static int cmd_dma(void) {
  char dir[512];
  if (find_device(0x1af4, 0x10f0, dir, sizeof(dir)) != 0) {
    check(0, "dma-present");
    return 1;
  }
  say("DMADEV bdf=%s", strrchr(dir, '/') + 1);

  // Memory Space + Bus Master (no driver does it for us).
  uint8_t cfg[64];
  read_config(dir, cfg, sizeof(cfg));
  check(write_config16(dir, 4, le16(cfg + 4) | 0x6) == 0, "dma-enable-bus-master");

  volatile uint8_t* bar0 = map_bar(dir, 0, 0x1000);
  volatile uint8_t* bar2 = map_bar(dir, 2, 0x4000);
  if (!bar0 || !bar2) {
    check(0, "dma-map-bars");
    return 1;
  }
  check(*reg32(bar0, kRegId) == 0x544d4144, "dma-id-register");
  *reg32(bar0, kRegControl) = 1;  // ENABLE, no interrupts (nothing to take them)

  // Three locked pages: A (fill target), B (copy source), C (copy target).
  const long page = sysconf(_SC_PAGESIZE);
  uint8_t* buf = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED | MAP_POPULATE, -1, 0);
  if (buf == MAP_FAILED) {
    check(0, "dma-buffer");
    return 1;
  }
  uint8_t *a = buf, *b = buf + page, *c = buf + 2 * page;
  memset(a, 0, page);
  for (long i = 0; i < page; i++) b[i] = (uint8_t)(i * 7 + 3);
  memset(c, 0, page);
  uint64_t pa = phys_addr(a), pb = phys_addr(b), pc = phys_addr(c);
  say("DMA buffers A=0x%" PRIx64 " B=0x%" PRIx64 " C=0x%" PRIx64, pa, pb, pc);
  if (!pa || !pb || !pc) {
    check(0, "dma-pagemap");
    return 1;
  }

  // FILL A: the server writes guest RAM through its mmap of the memfd.
  uint32_t st = run_op(bar0, bar2, kOpFill, 0, pa, (uint32_t)page, 0x5a5aa5a5u, 0x11);
  int fill_ok = (st & kStatusDone) != 0;
  for (long i = 0; fill_ok && i < page; i++) {
    fill_ok = a[i] == (uint8_t)(0x5a5aa5a5u >> (8 * (i % 4)));
  }
  check(fill_ok, "dma-fill-guest-memory");

  // COPY B -> C.
  st = run_op(bar0, bar2, kOpCopy, pb, pc, (uint32_t)page, 0, 0x22);
  check((st & kStatusDone) && memcmp(b, c, page) == 0, "dma-copy-guest-memory");

  // CHECKSUM B.
  st = run_op(bar0, bar2, kOpChecksum, pb, 0, (uint32_t)page, 0, 0x33);
  uint32_t want = crc32c(b, page);
  check((st & kStatusDone) && *reg32(bar0, kRegResultLo) == want, "dma-checksum");

  // A fault: DMA to an address no DMA map covers must fail cleanly.
  st = run_op(bar0, bar2, kOpFill, 0, 0xfff00000000ull, 64, 0, 0x44);
  check((st & kStatusError) && *reg32(bar0, kRegErrorCode) == 7, "dma-unmapped-fault");

  // The ring, in BAR2 pages 1-3 (sparse mmap: QEMU maps them from the
  // region fd, so these stores reach the server without a message).
  volatile uint8_t* desc = bar2 + kRingOffset;
  memset(c, 0, page);
  *reg32(desc, 0x00) = kOpCopy;
  *reg32(desc, 0x04) = 0;  // no interrupt
  *reg32(desc, 0x08) = (uint32_t)pb;
  *reg32(desc, 0x0c) = (uint32_t)(pb >> 32);
  *reg32(desc, 0x10) = (uint32_t)pc;
  *reg32(desc, 0x14) = (uint32_t)(pc >> 32);
  *reg32(desc, 0x18) = (uint32_t)page;
  *reg32(desc, 0x20) = 0;
  *reg32(desc, 0x24) = 0x55;
  *reg32(desc, 0x30) = 0;  // status: pending
  __sync_synchronize();
  *reg32(bar2, kRingDoorbell) = 1;
  // The descriptor's status is written first, the status block's ring_head
  // after it (docs/DMA_TEST_DEVICE.md): wait for both.
  uint32_t dstatus = 0;
  for (int i = 0; i < 100000; i++) {
    dstatus = *reg32(desc, 0x30);
    if (dstatus != 0 && *reg32(bar2, kStatusBlockOffset) == 1) break;
    usleep(100);
  }
  __sync_synchronize();
  say("DMA ring status=%u result=0x%x ring_head=%u completed=%u", dstatus, *reg32(desc, 0x28),
      *reg32(bar2, kStatusBlockOffset), *reg32(bar2, kStatusBlockOffset + 4));
  check(dstatus == 1 && memcmp(b, c, page) == 0 && *reg32(bar2, kStatusBlockOffset) == 1,
        "dma-ring-via-sparse-mmap");
  // Message DMA (DMA_READ / DMA_WRITE): QEMU maps guest RAM with fds, but
  // it also maps two ranges WITHOUT an fd, which the server can reach only by
  // asking QEMU: the BIOS ROM (read-only) and the mmap'ed pages of this very
  // device's BAR2 (peer-to-peer).
  //
  // DMA_READ: copy the last 16 bytes of the BIOS (the reset vector) into
  // guest RAM and compare them with /dev/mem.
  memset(c, 0, page);
  const uint64_t reset_vector = 0xfffffff0ull;
  st = run_op(bar0, bar2, kOpCopy, reset_vector, pc, 16, 0, 0x66);
  uint8_t rom[16] = {0};
  int mem = open("/dev/mem", O_RDONLY);
  int have_rom = mem >= 0 && pread(mem, rom, sizeof(rom), (off_t)reset_vector) == sizeof(rom);
  if (mem >= 0) close(mem);
  say("DMA rom via DMA_READ: %02x %02x %02x %02x %02x; via /dev/mem: %s %02x %02x %02x %02x %02x",
      c[0], c[1], c[2], c[3], c[4], have_rom ? "ok" : "unreadable", rom[0], rom[1], rom[2],
      rom[3], rom[4]);
  // SeaBIOS's reset vector is "ljmp $0xf000,$0xe05b" (ea 5b e0 00 f0).
  const uint8_t ljmp[5] = {0xea, 0x5b, 0xe0, 0x00, 0xf0};
  check((st & kStatusDone) && memcmp(c, have_rom ? rom : ljmp, have_rom ? 16 : 5) == 0,
        "dma-read-message");

  // DMA_WRITE: fill 64 bytes of BAR2's scratch page (page 3) through its bus
  // address, then read them back through the guest's own mapping of BAR2.
  unsigned long long bar2_start = 0, bar2_end = 0, bar2_flags = 0;
  {
    char path[600];
    snprintf(path, sizeof(path), "%s/resource", dir);
    FILE* f = fopen(path, "r");
    for (int i = 0; f && i <= 2; i++) {
      if (fscanf(f, "%llx %llx %llx", &bar2_start, &bar2_end, &bar2_flags) != 3) break;
    }
    if (f) fclose(f);
  }
  volatile uint8_t* scratch = bar2 + 0x3000;
  for (int i = 0; i < 64; i++) scratch[i] = 0;
  st = run_op(bar0, bar2, kOpFill, 0, bar2_start + 0x3000, 64, 0xc0ffee11u, 0x77);
  int write_ok = (st & kStatusDone) != 0;
  for (int i = 0; write_ok && i < 64; i++) {
    write_ok = scratch[i] == (uint8_t)(0xc0ffee11u >> (8 * (i % 4)));
  }
  say("DMA scratch after DMA_WRITE: %02x %02x %02x %02x %02x %02x %02x %02x", scratch[0],
      scratch[1], scratch[2], scratch[3], scratch[4], scratch[5], scratch[6], scratch[7]);
  check(write_ok, "dma-write-message");

  // DMA_READ of the same bytes: CHECKSUM through the bus address.
  uint8_t expect[64];
  for (int i = 0; i < 64; i++) expect[i] = (uint8_t)(0xc0ffee11u >> (8 * (i % 4)));
  st = run_op(bar0, bar2, kOpChecksum, bar2_start + 0x3000, 0, 64, 0, 0x88);
  check((st & kStatusDone) && *reg32(bar0, kRegResultLo) == crc32c(expect, 64),
        "dma-read-message-p2p");

  say("DMA completed_count=%u int_status=0x%x", *reg32(bar0, kRegCompletedCount),
      *reg32(bar0, kRegIntStatus));
  return failures ? 1 : 0;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: labtool pci|idio16|dma\n");
    return 2;
  }
  if (strcmp(argv[1], "pci") == 0) return cmd_pci();
  if (strcmp(argv[1], "idio16") == 0) return cmd_idio16();
  if (strcmp(argv[1], "dma") == 0) return cmd_dma();
  fprintf(stderr, "labtool: unknown command %s\n", argv[1]);
  return 2;
}
