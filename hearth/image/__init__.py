"""The golden guest image: one root filesystem, kernel and initramfs for every driver (`hearth image build`)."""
