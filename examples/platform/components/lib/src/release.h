/* Reading /etc/pib-release, the file the image builder writes into every
 * boot archive: PIB_BUILDSTAMP=<stamp> and one PIB_KEY_<COMPONENT>=<key>
 * line per component. */
#ifndef PIB_RELEASE_H
#define PIB_RELEASE_H

#define RELEASE_PATH "/etc/pib-release"
#define RELEASE_MAX_KEYS 64

struct release_key {
	char name[64];  /* component name, lower case */
	char value[128];
};

struct release {
	char buildstamp[64];
	int nkeys;
	struct release_key keys[RELEASE_MAX_KEYS];  /* sorted by name */
};

/* 0 on success, -1 (errno set) when the file cannot be read. */
int release_read(const char *path, struct release *out);

#endif
