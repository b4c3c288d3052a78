"""MONAI bundles: fetched from allowed places, unpacked safely, checked, kept per experiment."""
