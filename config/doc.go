// Package config owns megacomet's configuration: one Options struct, every
// default filled in by Default, TOML decoding that rejects unknown keys, and
// Validate, which names the offending key in a single line.
//
// Both roles read it: the manager decodes the file, workers receive the
// manager's already-validated Options over IPC, so a worker restarted after
// the file changed still runs the configuration its manager runs.
package config
