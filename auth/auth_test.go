package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/megacomet/megacomet/config"
)

const secret = "0123456789abcdef0123456789abcdef"

func hs(t testing.TB) *Verifier {
	v, err := New(&config.Auth{Secret: secret, Required: true})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func pemOf(t testing.TB, pub crypto.PublicKey) string {
	b, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: b}))
}

// Each way a token can be wrong gets its own one-line reason and status;
// none of them carries the token.
func TestVerifyRefusals(t *testing.T) {
	v := hs(t)
	now := time.Now()
	mint := func(c jwt.Claims, m jwt.SigningMethod, key any) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good, _ := Mint([]byte(secret), "alice", nil, time.Hour, now)
	other, _ := Mint([]byte("another secret, also 32 bytes long"), "alice", nil, time.Hour, now)
	expired, _ := Mint([]byte(secret), "alice", nil, -time.Minute, now)
	noExp := mint(jwt.RegisteredClaims{Subject: "alice"}, jwt.SigningMethodHS256, []byte(secret))
	none := mint(jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType)
	hs512 := mint(jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour))}, jwt.SigningMethodHS512, []byte(secret))
	notYet := mint(jwt.RegisteredClaims{Subject: "alice", ExpiresAt: jwt.NewNumericDate(now.Add(time.Hour)), NotBefore: jwt.NewNumericDate(now.Add(time.Hour))}, jwt.SigningMethodHS256, []byte(secret))
	for _, tc := range []struct {
		name, token, id string
		want            *Refusal
	}{
		{"good", good, "alice", nil},
		{"none", "", "alice", ErrNoToken},
		{"garbage", "not.a.jwt", "alice", ErrMalformed},
		{"other secret", other, "alice", ErrSignature},
		{"alg none", none, "alice", ErrAlgorithm},
		{"another HMAC", hs512, "alice", ErrAlgorithm},
		{"expired", expired, "alice", ErrExpired},
		{"no exp", noExp, "alice", ErrNoExpiry},
		{"not before", notYet, "alice", ErrNotYet},
		{"another id", good, "bob", ErrOtherClient},
	} {
		c, err := v.Verify(tc.token, tc.id)
		if tc.want == nil {
			if err != nil || c.Subject != "alice" {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		r, ok := err.(*Refusal)
		if !ok || r != tc.want {
			t.Errorf("%s: got %v, want %q", tc.name, err, tc.want.Reason)
			continue
		}
		if tc.token != "" && strings.Contains(r.Reason, tc.token) {
			t.Errorf("%s: the reason carries the token", tc.name)
		}
	}
	if ErrOtherClient.Status != 403 || ErrExpired.Status != 401 || ChannelRefused("x").Status != 403 {
		t.Errorf("statuses")
	}
}

// RS256 and ES256 tokens are checked with the public key alone, and a token
// that signs with HMAC using the public key as its secret - the classic
// algorithm confusion - is refused.
func TestPublicKeys(t *testing.T) {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, key := range []crypto.Signer{rk, ek} {
		pubPEM := pemOf(t, key.Public())
		v, err := New(&config.Auth{PublicKeyPEM: pubPEM, Required: true})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := MintWith(key, "alice", []string{"news"}, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if c, err := v.Verify(tok, "alice"); err != nil || !c.Allows("news") || c.Allows("sport") {
			t.Errorf("%T: %v %+v", key, err, c)
		}
		confused, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "alice",
			ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}).SignedString([]byte(pubPEM))
		if _, err := v.Verify(confused, "alice"); err != ErrAlgorithm {
			t.Errorf("%T: an HMAC over the public key: %v", key, err)
		}
	}
}

func TestChannelsClaim(t *testing.T) {
	for _, tc := range []struct {
		claim   []string
		channel string
		want    bool
	}{
		{nil, "anything", true},
		{[]string{}, "news", false},
		{[]string{"news"}, "news", true},
		{[]string{"news"}, "news2", false},
		{[]string{"news-*"}, "news-eu", true},
		{[]string{"news-*"}, "news", false},
		{[]string{"*"}, "x", true},
		{[]string{"a", "b*"}, "bee", true},
	} {
		if got := Allows(tc.claim, tc.channel); got != tc.want {
			t.Errorf("%q allows %q: %v, want %v", tc.claim, tc.channel, got, tc.want)
		}
	}
}

// What verifying costs a connection, per algorithm (make microbench).
func BenchmarkVerify(b *testing.B) {
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	hsTok, _ := Mint([]byte(secret), "alice", []string{"news"}, time.Hour, time.Now())
	rsTok, _ := MintWith(rk, "alice", []string{"news"}, time.Hour, time.Now())
	esTok, _ := MintWith(ek, "alice", []string{"news"}, time.Hour, time.Now())
	rv, _ := New(&config.Auth{PublicKeyPEM: pemOf(b, rk.Public())})
	ev, _ := New(&config.Auth{PublicKeyPEM: pemOf(b, ek.Public())})
	for _, c := range []struct {
		name string
		v    *Verifier
		tok  string
	}{{"HS256", hs(b), hsTok}, {"RS256", rv, rsTok}, {"ES256", ev, esTok}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, err := c.v.Verify(c.tok, "alice"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// FuzzVerify: no string that did not come from the key verifies - mangled
// tokens, other algorithms, alg none - and each refusal is a *Refusal
// with a one-line reason, never a panic. (The seeds include a real token,
// which must verify only as it is.)
func FuzzVerify(f *testing.F) {
	secret := strings.Repeat("k", 32)
	v, err := New(&config.Auth{Secret: secret, Required: true})
	if err != nil {
		f.Fatal(err)
	}
	good, _ := Mint([]byte(secret), "alice", []string{"news"}, time.Hour, time.Now())
	f.Add(good)
	f.Add(good[:len(good)-2])
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.")
	f.Add("a.b.c")
	f.Add("")
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(token, "alice")
		if token == good {
			if err != nil {
				t.Fatalf("the minted token is refused: %v", err)
			}
			return
		}
		if err == nil {
			t.Fatalf("%q verified as %+v", token, c)
		}
		if r, ok := err.(*Refusal); !ok || r.Reason == "" || strings.ContainsAny(r.Reason, "\r\n") {
			t.Fatalf("refusal %#v: want a *Refusal with a one-line reason", err)
		}
	})
}
