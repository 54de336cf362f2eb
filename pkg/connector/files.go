package connector

import (
	"errors"
	"fmt"
)

// LoadConfigFiles reads several connectors files and merges them in order (`tenure dev`
// keeps its generated demo targets apart from the user's own). A name defined in two files
// is an error naming the file and line of both, as a duplicate within one file is.
func LoadConfigFiles(paths ...string) ([]Config, error) {
	var all []Config
	var errs []error
	first := map[string]Config{}
	for _, p := range paths {
		cfgs, err := LoadConfigs(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, c := range cfgs {
			if prev, dup := first[c.Name]; dup {
				errs = append(errs, fmt.Errorf("%s:%d: connector %q is already defined at %s:%d; rename one of them", c.file, c.line, c.Name, prev.file, prev.line))
				continue
			}
			first[c.Name] = c
		}
		all = append(all, cfgs...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return all, nil
}
