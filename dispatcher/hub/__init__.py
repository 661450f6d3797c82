"""The hub's own code (the dispatcher daemon): its server, service rules, store, publisher and reporters. Nothing in the kit, the observer or the runner imports it."""
