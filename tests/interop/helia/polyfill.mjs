// Loaded with `node --import ./polyfill.mjs peer.mjs` before anything else.
// Node 20 lacks Promise.withResolvers (Node >= 22), which js-libp2p 3 and
// helia 7 call at run time. Nothing else is patched.
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve
      let reject
      const promise = new this((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    }
  })
}
