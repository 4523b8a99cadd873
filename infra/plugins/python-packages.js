'use strict';

// One zip per function, holding only the libraries that function imports.
//
// For every Python function in serverless.yml this runs scripts/build/lambda_packages.py, which
// builds .serverless/<name>.zip from the function's handler directory, shared/, migrations/ and
// the pinned libraries of its `requirements` file (default requirements.txt), precompiled for
// CPython 3.12, and then points the function at that zip (package.artifact: the path osls itself
// uses with package.individually), so osls zips nothing itself. It runs in `osls package`,
// `osls deploy` and `osls deploy function`.
//
// Why not serverless-python-requirements (6.1.2)? It installs one requirements file for all
// functions; per-function requirements exist only through `module:`, which expects each function
// in a folder of its own with its own requirements.txt, and keeps only that folder in the zip:
// shared/ and migrations/ would be dropped. Its `-r` lines are also copied into a generated file
// elsewhere, where the relative path no longer resolves. Bytecode needed a second plugin hooked
// after it. One small script that installs, compiles and zips is easier to read and to test.

const { spawnSync } = require('child_process');
const path = require('path');

const DEFAULT_REQUIREMENTS = 'requirements.txt';

class PythonPackages {
  constructor(serverless, options) {
    this.serverless = serverless;
    this.options = options;
    serverless.configSchemaHandler.defineFunctionProperties('aws', {
      properties: { requirements: { type: 'string' } },
    });
    this.hooks = {
      // Before osls' own packaging, which then finds every artifact already built.
      'before:package:createDeploymentArtifacts': () => this.build(this.pythonFunctions()),
      'before:deploy:function:packageFunction': () => this.build([this.options.function]),
    };
  }

  pythonFunctions() {
    const service = this.serverless.service;
    return service.getAllFunctions().filter((name) => {
      const fn = service.getFunction(name);
      const runtime = fn.runtime || service.provider.runtime || '';
      return fn.handler && runtime.startsWith('python');
    });
  }

  build(names) {
    const service = this.serverless.service;
    const specs = names.map((name) => {
      const fn = service.getFunction(name);
      return `${name}:${fn.handler}:${fn.requirements || DEFAULT_REQUIREMENTS}`;
    });
    const out = path.join(this.serverless.serviceDir, '.serverless');
    // Any Python 3.11+ with pip runs the build; CPython 3.12 (LAMBDA_PYTHON, or what
    // scripts/build/find-lambda-python.sh finds) compiles the bytecode.
    const python = process.env.BUILD_PYTHON || 'python3';
    // As a module from the project root (cwd), like every script: python -m scripts.build.lambda_packages.
    const result = spawnSync(python, ['-m', 'scripts.build.lambda_packages', '--out', out, ...specs], {
      cwd: this.serverless.serviceDir,
      stdio: 'inherit',
    });
    if (result.status !== 0) {
      throw new this.serverless.classes.Error(
        `python-packages: ${python} -m scripts.build.lambda_packages failed (${result.error || `exit ${result.status}`})`
      );
    }
    for (const name of names) {
      const fn = service.getFunction(name);
      fn.package = { ...(fn.package || {}), artifact: path.join(out, `${name}.zip`) };
    }
  }
}

module.exports = PythonPackages;
