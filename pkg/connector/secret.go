package connector

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Secret is a config value that must not leak: a password, a token, a URL with credentials.
// In YAML it is either a plain string (the value itself) or a mapping with exactly one of
//
//	value: the value itself
//	env:   the name of an environment variable holding it
//	file:  the path of a file holding it (a trailing newline is dropped)
//
// e.g. `url: {env: TENURE_EHR_DB_URL}` or `token: {file: /run/secrets/scim}`. Env and file are
// read by Resolve, not at decode time, so a rotated file is picked up on the next open and a
// config can be checked on a machine without the secrets.
//
// A Secret prints, logs (slog.LogValuer) and marshals redacted; only Resolve reveals it.
type Secret struct {
	value string
	env   string
	file  string
}

const redacted = "[REDACTED]"

// SecretValue returns a Secret holding v itself.
func SecretValue(v string) Secret { return Secret{value: v} }

// SecretEnv returns a Secret read from environment variable name.
func SecretEnv(name string) Secret { return Secret{env: name} }

// SecretFile returns a Secret read from the file at path.
func SecretFile(path string) Secret { return Secret{file: path} }

// IsZero reports whether no value or source was given.
func (s Secret) IsZero() bool { return s.value == "" && s.env == "" && s.file == "" }

// Source says where the secret comes from without revealing it ("value", "env NAME",
// "file PATH", or "" when unset), for error messages and operator listings.
func (s Secret) Source() string {
	switch {
	case s.env != "":
		return "env " + s.env
	case s.file != "":
		return "file " + s.file
	case s.value != "":
		return "value"
	}
	return ""
}

// Resolve returns the secret. An unset variable, an unreadable file or an empty result is an
// error, since an empty credential is never what the operator meant.
func (s Secret) Resolve() (string, error) {
	var v string
	switch {
	case s.env != "":
		var ok bool
		v, ok = os.LookupEnv(s.env)
		if !ok {
			return "", fmt.Errorf("secret: environment variable %s is not set", s.env)
		}
	case s.file != "":
		b, err := os.ReadFile(s.file)
		if err != nil {
			return "", fmt.Errorf("secret: %w", err)
		}
		v = strings.TrimRight(string(b), "\r\n")
	default:
		v = s.value
	}
	if v == "" {
		if src := s.Source(); src != "" {
			return "", fmt.Errorf("secret: %s is empty", src)
		}
		return "", errors.New("secret: not set")
	}
	return v, nil
}

func (s Secret) String() string {
	if s.IsZero() {
		return ""
	}
	return redacted
}

// GoString keeps %#v from printing the fields.
func (s Secret) GoString() string { return `connector.Secret("` + s.String() + `")` }

// LogValue redacts the secret in slog output.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalYAML keeps the env/file reference (not secret, and useful when a config is echoed)
// and redacts a literal value.
func (s Secret) MarshalYAML() (any, error) { return s.marshalable(), nil }

// MarshalJSON is MarshalYAML for JSON.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.marshalable()) }

func (s Secret) marshalable() any {
	switch {
	case s.env != "":
		return map[string]string{"env": s.env}
	case s.file != "":
		return map[string]string{"file": s.file}
	}
	return s.String()
}

// UnmarshalYAML accepts a plain string or a {value|env|file: ...} mapping, strictly.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	fail := func(line int, format string, args ...any) error {
		// A TypeError lets the decoder carry on and report all problems together.
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ", line) + fmt.Sprintf(format, args...)}}
	}
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			*s = Secret{}
			return nil
		}
		*s = Secret{value: n.Value}
		return nil
	case yaml.MappingNode:
		var out Secret
		set := 0
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			for v.Kind == yaml.AliasNode && v.Alias != nil {
				v = v.Alias
			}
			if v.Kind != yaml.ScalarNode {
				return fail(v.Line, "secret %s must be a string", k.Value)
			}
			switch k.Value {
			case "value":
				out.value = v.Value
			case "env":
				out.env = v.Value
			case "file":
				out.file = v.Value
			default:
				return fail(k.Line, "unknown field %q in secret (want one of value, env, file)", k.Value)
			}
			set++
		}
		if set != 1 {
			return fail(n.Line, "secret needs exactly one of value, env, file")
		}
		*s = out
		return nil
	default:
		return fail(n.Line, "secret must be a string or a mapping with one of value, env, file")
	}
}

// UnmarshalJSON accepts the same shapes as UnmarshalYAML, for hosts that decode JSON
// themselves.
func (s *Secret) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err == nil {
		*s = Secret{value: str}
		return nil
	}
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return errors.New("secret must be a string or an object with one of value, env, file")
	}
	if len(m) != 1 {
		return errors.New("secret needs exactly one of value, env, file")
	}
	for k, v := range m {
		switch k {
		case "value":
			*s = Secret{value: v}
		case "env":
			*s = Secret{env: v}
		case "file":
			*s = Secret{file: v}
		default:
			return fmt.Errorf("unknown field %q in secret (want one of value, env, file)", k)
		}
	}
	return nil
}
