package config

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// ParsePublicKey reads a PEM public key for client tokens: RSA (RS256, at
// least 2048 bits) or ECDSA P-256 (ES256).
func ParsePublicKey(b []byte) (crypto.PublicKey, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block in the file")
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		if rk, err2 := x509.ParsePKCS1PublicKey(block.Bytes); err2 == nil {
			key, err = rk, nil
		} else {
			return nil, fmt.Errorf("not a public key (%s): %v", block.Type, err)
		}
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("an RSA key of %d bits: use at least 2048", k.N.BitLen())
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("an ECDSA key on %s: ES256 needs P-256", k.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("a %T: use an RSA (RS256) or ECDSA P-256 (ES256) key", key)
	}
	return key, nil
}
