/* pib-info: what platform build is running.
 *   pib-info           print the build stamp, component keys, kernel and uptime
 *   pib-info NAME      print one value: "buildstamp" or a component name */
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

#include <pib/release.h>

static void uptime(void)
{
	double up = 0;
	FILE *fp = fopen("/proc/uptime", "r");

	if (fp != NULL) {
		if (fscanf(fp, "%lf", &up) != 1)
			up = 0;
		fclose(fp);
	}
	printf("uptime %.2fs\n", up);
}

int main(int argc, char **argv)
{
	struct release rel;
	struct utsname u;

	if (release_read(RELEASE_PATH, &rel) != 0) {
		perror("pib-info: " RELEASE_PATH);
		return 1;
	}
	if (argc > 2) {
		fprintf(stderr, "usage: pib-info [buildstamp|COMPONENT]\n");
		return 2;
	}
	if (argc == 2) {
		if (strcmp(argv[1], "buildstamp") == 0) {
			printf("%s\n", rel.buildstamp);
			return 0;
		}
		for (int i = 0; i < rel.nkeys; i++) {
			if (strcmp(argv[1], rel.keys[i].name) == 0) {
				printf("%s\n", rel.keys[i].value);
				return 0;
			}
		}
		fprintf(stderr, "pib-info: no component %s\n", argv[1]);
		return 1;
	}
	printf("buildstamp %s\n", rel.buildstamp);
	for (int i = 0; i < rel.nkeys; i++)
		printf("component %s %.16s\n", rel.keys[i].name, rel.keys[i].value);
	if (uname(&u) == 0)
		printf("kernel %s %s\n", u.release, u.machine);
	uptime();
	return 0;
}
