// Command delegatedclient calls a SPIRE agent's Delegated Identity API
// (spire.api.agent.delegatedidentity.v1.DelegatedIdentity, on the agent's
// admin socket) with the generated client from spire-api-sdk at the version
// SPIRE pins. It is the reference client the tests use to prove that a SPIRE
// setup (authorized_delegates, the delegate's own entry) works before
// svid-broker's own client is pointed at it.
//
//	delegatedclient -socket unix:///admin.sock -selectors unix:uid:1000[,unix:gid:1000] [-audience A]
//	delegatedclient -socket unix:///admin.sock -pid 1234 [-audience A]
//
// It reads the first message of SubscribeToX509SVIDs, SubscribeToX509Bundles
// and SubscribeToJWTBundles, calls FetchJWTSVIDs when -audience is given, and
// prints one JSON object. Exit status: 0 success, 1 a call failed (the gRPC
// status text is kept: "rpc error: code = PermissionDenied desc = ..."), 2 bad
// usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	delegatedidentityv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/agent/delegatedidentity/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

type svidOut struct {
	SPIFFEID    string `json:"spiffe_id"`
	ChainLength int    `json:"chain_length,omitempty"`
	ExpiresAt   int64  `json:"expires_at"`
	Hint        string `json:"hint"`
	Token       string `json:"token,omitempty"`
}

type report struct {
	X509SVIDs              []svidOut `json:"x509_svids"`
	FederatesWith          []string  `json:"federates_with"`
	X509BundleTrustDomains []string  `json:"x509_bundle_trust_domains"`
	JWTBundleTrustDomains  []string  `json:"jwt_bundle_trust_domains"`
	JWTSVIDs               []svidOut `json:"jwt_svids,omitempty"`
}

func main() {
	socket := flag.String("socket", "", "admin socket, unix:///path")
	selectorList := flag.String("selectors", "", "comma-separated type:value selectors, e.g. unix:uid:1000,unix:gid:1000")
	pid := flag.Int("pid", 0, "PID of the workload (instead of -selectors)")
	audience := flag.String("audience", "", "also fetch JWT-SVIDs for this audience")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline for all calls")
	flag.Parse()

	if *socket == "" || (*selectorList == "") == (*pid == 0) || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "delegatedclient: need -socket unix:///path and exactly one of -selectors or -pid")
		os.Exit(2)
	}
	selectors, err := parseSelectors(*selectorList)
	if err != nil {
		fmt.Fprintf(os.Stderr, "delegatedclient: %v\n", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	rep, err := run(ctx, *socket, selectors, int32(*pid), *audience)
	if err != nil {
		fmt.Fprintf(os.Stderr, "delegatedclient: %v\n", err)
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(rep)
}

func parseSelectors(list string) ([]*types.Selector, error) {
	var out []*types.Selector
	if list == "" {
		return out, nil
	}
	for _, s := range strings.Split(list, ",") {
		typ, value, ok := strings.Cut(s, ":")
		if !ok || typ == "" || value == "" {
			return nil, fmt.Errorf("selector %q is not type:value", s)
		}
		out = append(out, &types.Selector{Type: typ, Value: value})
	}
	return out, nil
}

func run(ctx context.Context, socket string, selectors []*types.Selector, pid int32, audience string) (*report, error) {
	if !strings.HasPrefix(socket, "unix://") {
		return nil, errors.New("-socket must be unix:///path")
	}
	conn, err := grpc.NewClient(socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", socket, err)
	}
	defer conn.Close()
	client := delegatedidentityv1.NewDelegatedIdentityClient(conn)
	rep := &report{X509SVIDs: []svidOut{}, FederatesWith: []string{}}

	x509Stream, err := client.SubscribeToX509SVIDs(ctx, &delegatedidentityv1.SubscribeToX509SVIDsRequest{Selectors: selectors, Pid: pid})
	if err != nil {
		return nil, fmt.Errorf("SubscribeToX509SVIDs: %w", err)
	}
	x509Resp, err := x509Stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("SubscribeToX509SVIDs: %w", err)
	}
	for _, s := range x509Resp.X509Svids {
		rep.X509SVIDs = append(rep.X509SVIDs, svidOut{
			SPIFFEID:    idString(s.X509Svid.GetId()),
			ChainLength: len(s.X509Svid.GetCertChain()),
			ExpiresAt:   s.X509Svid.GetExpiresAt(),
			Hint:        s.X509Svid.GetHint(),
		})
	}
	rep.FederatesWith = append(rep.FederatesWith, x509Resp.FederatesWith...)

	bundleStream, err := client.SubscribeToX509Bundles(ctx, &delegatedidentityv1.SubscribeToX509BundlesRequest{})
	if err != nil {
		return nil, fmt.Errorf("SubscribeToX509Bundles: %w", err)
	}
	bundles, err := bundleStream.Recv()
	if err != nil {
		return nil, fmt.Errorf("SubscribeToX509Bundles: %w", err)
	}
	rep.X509BundleTrustDomains = sortedKeys(bundles.CaCertificates)

	jwtBundleStream, err := client.SubscribeToJWTBundles(ctx, &delegatedidentityv1.SubscribeToJWTBundlesRequest{})
	if err != nil {
		return nil, fmt.Errorf("SubscribeToJWTBundles: %w", err)
	}
	jwtBundles, err := jwtBundleStream.Recv()
	if err != nil {
		return nil, fmt.Errorf("SubscribeToJWTBundles: %w", err)
	}
	rep.JWTBundleTrustDomains = sortedKeys(jwtBundles.Bundles)

	if audience != "" {
		resp, err := client.FetchJWTSVIDs(ctx, &delegatedidentityv1.FetchJWTSVIDsRequest{
			Audience: []string{audience}, Selectors: selectors, Pid: pid,
		})
		if err != nil {
			return nil, fmt.Errorf("FetchJWTSVIDs: %w", err)
		}
		for _, s := range resp.Svids {
			rep.JWTSVIDs = append(rep.JWTSVIDs, svidOut{
				SPIFFEID: idString(s.GetId()), ExpiresAt: s.GetExpiresAt(), Hint: s.GetHint(), Token: s.GetToken(),
			})
		}
	}
	return rep, nil
}

func idString(id *types.SPIFFEID) string {
	if id == nil {
		return ""
	}
	return "spiffe://" + id.TrustDomain + id.Path
}

func sortedKeys(m map[string][]byte) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
