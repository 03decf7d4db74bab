"""Built-in bloodcell plugins, registered through the `bloodcell` entry-point group like any other."""
