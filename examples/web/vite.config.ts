import { defineConfig } from 'vite'
import react from '@vitejs/plugin-react'

// Built into dist/ and served by the FastAPI example (create_app(web_dir=...)), so the app and
// /api/* share one origin; `vite dev` proxies /api to a backend on :8000.
export default defineConfig({
  plugins: [react()],
  build: { outDir: 'dist', emptyOutDir: true },
  server: { proxy: { '/api': 'http://127.0.0.1:8000' } },
})
