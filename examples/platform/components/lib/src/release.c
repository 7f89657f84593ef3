#define _DEFAULT_SOURCE
#include "release.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void copy(char *dst, size_t size, const char *src)
{
	size_t n = strlen(src);

	if (n >= size)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static int by_name(const void *a, const void *b)
{
	return strcmp(((const struct release_key *)a)->name, ((const struct release_key *)b)->name);
}

int release_read(const char *path, struct release *out)
{
	char line[512];
	FILE *fp = fopen(path, "r");

	memset(out, 0, sizeof(*out));
	if (fp == NULL)
		return -1;
	while (fgets(line, sizeof(line), fp) != NULL) {
		char *eq = strchr(line, '=');

		line[strcspn(line, "\r\n")] = '\0';
		if (eq == NULL)
			continue;
		*eq = '\0';
		if (strcmp(line, "PIB_BUILDSTAMP") == 0) {
			copy(out->buildstamp, sizeof(out->buildstamp), eq + 1);
		} else if (strncmp(line, "PIB_KEY_", 8) == 0 && out->nkeys < RELEASE_MAX_KEYS) {
			struct release_key *k = &out->keys[out->nkeys++];

			copy(k->name, sizeof(k->name), line + 8);
			for (char *p = k->name; *p; p++)
				*p = (char)tolower((unsigned char)*p);
			copy(k->value, sizeof(k->value), eq + 1);
		}
	}
	fclose(fp);
	qsort(out->keys, (size_t)out->nkeys, sizeof(out->keys[0]), by_name);
	return 0;
}
