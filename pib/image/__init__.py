"""The platform image: manifests, their resolution against the proto areas,
the cpio writer, the image writer, the build's image step, and booting it."""
