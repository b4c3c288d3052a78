"""Model families as plug-ins: one folder per family (custom bundles, VISTA-3D, DeepEdit), one registry by `network_arch`."""
