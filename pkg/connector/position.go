package connector

// Position says where the entry was written: its file (empty when parsed from bytes) and
// line (0 when unknown). Hosts that merge several connectors files use it to report clashes.
func (c *Config) Position() (file string, line int) { return c.file, c.line }
