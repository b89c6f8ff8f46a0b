/*
 * outb: writes one byte to an I/O port from user space, as a guest test needs to poke a
 * port the vmm watches (the stock kernel has no /dev/port).
 *
 *   outb PORT VALUE     e.g. `taskset 2 outb 0x80 0` writes 0 to port 0x80 from CPU 1
 *
 * Exits 0 once the byte is written, 1 if the port cannot be opened to this process
 * (ioperm), 2 on a usage error.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>

static int parse(const char *text, unsigned long max, unsigned long *value)
{
    char *end;
    errno = 0;
    *value = strtoul(text, &end, 0);
    return errno == 0 && *text != '\0' && *end == '\0' && *value <= max;
}

int main(int argc, char **argv)
{
    unsigned long port, value;
    if (argc != 3 || !parse(argv[1], 0xffff, &port) || !parse(argv[2], 0xff, &value)) {
        fprintf(stderr, "usage: outb PORT VALUE (PORT up to 0xffff, VALUE up to 0xff)\n");
        return 2;
    }
    if (ioperm(port, 1, 1) != 0) {
        fprintf(stderr, "outb: ioperm(%#lx): %s\n", port, strerror(errno));
        return 1;
    }
    outb((unsigned char)value, (unsigned short)port);
    return 0;
}
