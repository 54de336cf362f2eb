package ssf

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/go-jose/go-jose/v4"

	"github.com/tenure-dev/tenure/pkg/keyfile"
)

// LoadOrCreateKey reads the transmitter's RSA signing key (PEM, PKCS #8 "PRIVATE KEY") from
// path, or creates a 2048-bit key there (mode 0600) when the file does not exist. RS256 is
// what SSF receivers are sure to accept.
func LoadOrCreateKey(path string) (*rsa.PrivateKey, error) {
	k, err := keyfile.LoadOrCreate(path, func() (crypto.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) })
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an RSA key (SETs are signed RS256)", path)
	}
	if rk.N.BitLen() < 2048 {
		return nil, fmt.Errorf("%s: RSA key of %d bits; at least 2048 are needed", path, rk.N.BitLen())
	}
	return rk, nil
}

// keyID is the RFC 7638 thumbprint of the public key, base64url: stable across restarts and
// replicas that share the key file.
func keyID(pub crypto.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64URL(tp), nil
}

// publishedKeys is the JWKS: the signing key, then the retired keys (from memory, then from
// files). A retired key that is the signing key, or listed twice, is a configuration mistake.
func publishedKeys(signing *rsa.PublicKey, kid string, retired []*rsa.PublicKey, files []string) (jose.JSONWebKeySet, error) {
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: signing, KeyID: kid, Algorithm: string(jose.RS256), Use: "sig"}}}
	seen := map[string]string{kid: "the signing key"}
	add := func(pub *rsa.PublicKey, from string) error {
		id, err := keyID(pub)
		if err != nil {
			return err
		}
		if other, dup := seen[id]; dup {
			return fmt.Errorf("retired key %s is %s", from, other)
		}
		seen[id] = from
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: pub, KeyID: id, Algorithm: string(jose.RS256), Use: "sig"})
		return nil
	}
	for i, pub := range retired {
		if err := add(pub, fmt.Sprintf("RetiredKeys[%d]", i)); err != nil {
			return set, err
		}
	}
	for _, f := range files {
		pub, err := readPublicKey(f)
		if err != nil {
			return set, fmt.Errorf("retired key %s: %w", f, err)
		}
		if err := add(pub, f); err != nil {
			return set, err
		}
	}
	return set, nil
}

// readPublicKey reads an RSA public key from a PEM file holding the private key (PKCS #8
// "PRIVATE KEY", as LoadOrCreateKey writes) or only the public key ("PUBLIC KEY"). Unlike the
// signing key, a missing file is an error: it is never created.
func readPublicKey(path string) (*rsa.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("no PEM block")
	}
	var k any
	switch blk.Type {
	case "PRIVATE KEY":
		priv, err := keyfile.Parse(b)
		if err != nil {
			return nil, err
		}
		if rk, ok := priv.(*rsa.PrivateKey); ok {
			k = &rk.PublicKey
		}
	case "PUBLIC KEY":
		if k, err = x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("PEM %q block: want \"PRIVATE KEY\" or \"PUBLIC KEY\"", blk.Type)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("not an RSA key (SETs are signed RS256)")
	}
	return pub, nil
}
