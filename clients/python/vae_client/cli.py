"""``vae-client``: samples to a PNG grid, latents and scores of image files, the models served.

    vae-client --url http://127.0.0.1:8000 sample -n 16 --seed 1 -o grid.png
    vae-client encode a.png b.png            # posterior means, one line per image
    vae-client elbo a.png b.png              # a table of the ELBO's terms, in nats
    vae-client models

The API key comes from VAE_API_KEY. Errors end in one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .client import Client
from .errors import VaeError
from .images import grid, png


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae-client", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("VAE_URL", "http://127.0.0.1:8000"), help="the service")
    parser.add_argument("--model", help="a model name (default: the service's default model)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sample = commands.add_parser("sample", help="draw samples from the prior into a PNG grid")
    sample.add_argument("-n", type=int, default=16, help="how many (default 16)")
    sample.add_argument("--seed", type=int)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("-o", "--output", type=Path, default=Path("samples.png"), help="the PNG grid to write")
    for name, text in (("encode", "posterior means of image files"), ("elbo", "the ELBO's terms of image files")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
        sub.add_argument("--samples", type=int, default=100 if name == "elbo" else 0, help="K importance samples")
        sub.add_argument("--seed", type=int, default=0)
    commands.add_parser("models", help="the models served: name, version, image shape, latent size, state")
    return parser


def run(args: argparse.Namespace, out) -> None:
    with Client(args.url, api_key=os.environ.get("VAE_API_KEY"), timeout=args.timeout) as vae:
        if args.command == "sample":
            samples = vae.sample(args.n, seed=args.seed, temperature=args.temperature, model=args.model)
            args.output.write_bytes(png(grid(samples.images)))
            print(f"{args.output}: {args.n} samples of {samples.model}, seed {samples.seed}", file=out)
        elif args.command == "encode":
            encoding = vae.encode([str(p) for p in args.images], samples=args.samples, seed=args.seed, model=args.model)
            for path, mean in zip(args.images, encoding.mean):
                print(f"{path}\t" + " ".join(f"{v:.4f}" for v in mean), file=out)
        elif args.command == "elbo":
            e = vae.elbo([str(p) for p in args.images], samples=args.samples, seed=args.seed, model=args.model)
            print("image\telbo\treconstruction\tkl\tlog_likelihood\tgap", file=out)
            for i, path in enumerate(args.images):
                values = (e.elbo[i], e.reconstruction[i], e.kl[i], e.log_likelihood[i], e.gap[i])
                print(f"{path}\t" + "\t".join(f"{v:.2f}" for v in values), file=out)
        elif args.command == "models":
            print("name\tversion\tstate\timage_shape\tlatent_dim\tlikelihood", file=out)
            for m in vae.models():
                shape = "×".join(map(str, m.get("image_shape", []))) or "-"
                fields = (
                    m["name"],
                    m.get("version"),
                    m.get("state"),
                    shape,
                    m.get("latent_dim", "-"),
                    m.get("likelihood", "-"),
                )
                print("\t".join(str(f) for f in fields), file=out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args, sys.stdout)
    except (VaeError, OSError, ImportError, ValueError) as exc:
        print(f"vae-client {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
