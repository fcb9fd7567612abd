// Module resolution hook: `portcullis:policy/<interface>@<version>` -> ./<interface>.js.
export async function resolve(specifier, context, nextResolve) {
  const m = /^portcullis:policy\/([a-z-]+)(@[0-9.]+)?$/.exec(specifier);
  if (m) {
    return { url: new URL(`./${m[1]}.js`, import.meta.url).href, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
