"""The guest contract — the one home of what hearth and a guest agree on, used by both `hearth.image` (which builds
guests) and `hearth.sandbox` (whose drivers run them): the image layout (`layout`: file names under
HEARTH_IMAGE_DIR), the agent-config document every driver hands its agent (`configdrive`), the guest packages
(`packages`) and the files and console markers of the boot path (`files`)."""
