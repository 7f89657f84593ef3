"""Building components: checkouts, keys and plan, the build environment, the
runner, and the commands that put them together (pib.build.commands)."""
