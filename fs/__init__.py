"""The filesystem: the Volume library, the FUSE glue and the command line."""
